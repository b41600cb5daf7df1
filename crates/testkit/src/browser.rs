//! A real browser for tests: Debian's headless Chromium driven over the W3C WebDriver protocol
//! through its `chromedriver`. The protocol is JSON over HTTP, so this small client speaks it
//! with the reqwest client the tests already use instead of pulling a WebDriver crate and its
//! TLS stack into every test build.

use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};

/// The W3C element reference key.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A found element.
#[derive(Debug, Clone)]
pub struct Element(String);

/// A headless Chromium session with its own chromedriver, profile and download folder.
#[derive(Debug)]
pub struct Browser {
    driver: Child,
    http: reqwest::Client,
    /// The session's URL at chromedriver.
    session: String,
    /// Where the browser saves downloads.
    pub downloads: PathBuf,
    _profile: tempfile::TempDir,
    _download_dir: tempfile::TempDir,
}

fn find_binary(env: &str, candidates: &[&str]) -> PathBuf {
    if let Ok(p) = std::env::var(env) {
        return PathBuf::from(p);
    }
    candidates
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .unwrap_or_else(|| {
            panic!(
                "{} not found (looked in {candidates:?}, or set {env}): the browser tests need \
                 Debian's chromium and chromium-driver; `./scripts/ensure-deps test` installs them",
                candidates[0]
            )
        })
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl Browser {
    /// Starts chromedriver and a headless Chromium window of 1280×900.
    pub async fn start() -> Self {
        let driver_bin = find_binary(
            "APITRAIL_CHROMEDRIVER",
            &["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"],
        );
        let chromium = find_binary(
            "APITRAIL_CHROMIUM",
            &["/usr/bin/chromium", "/usr/lib/chromium/chromium"],
        );
        let port = free_port();
        // Its own process group, so that a failed test's drop ends Chromium with it.
        let driver = Command::new(&driver_bin)
            .process_group(0)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", driver_bin.display()));
        let http = reqwest::Client::new();
        let base = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = http.get(format!("{base}/status")).send().await
                && let Ok(v) = r.json::<Value>().await
                && v["value"]["ready"] == true
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "chromedriver did not become ready"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let profile = tempfile::tempdir().expect("profile dir");
        let download_dir = tempfile::tempdir().expect("download dir");
        // Without the background-networking switches Chromium keeps dialling Google's hosts,
        // which a closed network refuses (slowly).
        let args = vec![
            "--headless=new".to_owned(),
            "--no-sandbox".to_owned(),
            "--disable-gpu".to_owned(),
            "--disable-dev-shm-usage".to_owned(),
            "--disable-quic".to_owned(),
            "--no-first-run".to_owned(),
            "--disable-background-networking".to_owned(),
            "--disable-component-update".to_owned(),
            "--disable-sync".to_owned(),
            "--disable-features=Translate,OptimizationHints,MediaRouter".to_owned(),
            "--window-size=1280,900".to_owned(),
            format!("--user-data-dir={}", profile.path().display()),
        ];
        let caps = json!({
            "capabilities": {"alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": {
                    "binary": chromium,
                    "args": args,
                    "prefs": {
                        "download.default_directory": download_dir.path(),
                        "download.prompt_for_download": false,
                    },
                },
                "goog:loggingPrefs": {"browser": "ALL"},
            }}
        });
        let resp: Value = http
            .post(format!("{base}/session"))
            .json(&caps)
            .send()
            .await
            .expect("create a WebDriver session")
            .json()
            .await
            .expect("session answer");
        let id = resp["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {resp}"));
        let session = format!("{base}/session/{id}");
        let browser = Self {
            driver,
            http,
            session,
            downloads: download_dir.path().to_owned(),
            _profile: profile,
            _download_dir: download_dir,
        };
        // Headless Chromium saves downloads only once told where, over the DevTools bridge.
        let _ = browser
            .cmd(
                "POST",
                "goog/cdp/execute",
                json!({"cmd": "Browser.setDownloadBehavior", "params": {
                    "behavior": "allow", "downloadPath": browser.downloads, "eventsEnabled": false}}),
            )
            .await;
        browser
    }

    /// Sends one WebDriver command; errors come back as `Err(message)`.
    pub async fn cmd(&self, method: &str, path: &str, body: Value) -> Result<Value, String> {
        let url = if path.is_empty() {
            self.session.clone()
        } else {
            format!("{}/{path}", self.session)
        };
        let req = match method {
            "GET" => self.http.get(url),
            "DELETE" => self.http.delete(url),
            _ => self.http.post(url).json(&body),
        };
        let resp = req.send().await.map_err(|e| e.to_string())?;
        let ok = resp.status().is_success();
        let v: Value = resp.json().await.map_err(|e| e.to_string())?;
        if ok {
            Ok(v["value"].clone())
        } else {
            Err(format!(
                "{}: {}",
                v["value"]["error"].as_str().unwrap_or("error"),
                v["value"]["message"]
                    .as_str()
                    .unwrap_or("")
                    .lines()
                    .next()
                    .unwrap_or("")
            ))
        }
    }

    async fn must(&self, method: &str, path: &str, body: Value) -> Value {
        self.cmd(method, path, body)
            .await
            .unwrap_or_else(|e| panic!("WebDriver {method} {path}: {e}"))
    }

    /// Opens `url`.
    pub async fn goto(&self, url: &str) {
        self.must("POST", "url", json!({ "url": url })).await;
    }

    /// The address bar.
    pub async fn url(&self) -> String {
        self.must("GET", "url", Value::Null)
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// Resizes the window.
    pub async fn resize(&self, width: u32, height: u32) {
        self.must(
            "POST",
            "window/rect",
            json!({"width": width, "height": height}),
        )
        .await;
    }

    /// The first element matching `css`, if any.
    pub async fn try_find(&self, css: &str) -> Option<Element> {
        self.cmd(
            "POST",
            "element",
            json!({"using": "css selector", "value": css}),
        )
        .await
        .ok()
        .and_then(|v| v[ELEMENT].as_str().map(|s| Element(s.to_owned())))
    }

    /// Every element matching `css`.
    pub async fn find_all(&self, css: &str) -> Vec<Element> {
        self.must(
            "POST",
            "elements",
            json!({"using": "css selector", "value": css}),
        )
        .await
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v[ELEMENT].as_str().map(|s| Element(s.to_owned())))
                .collect()
        })
        .unwrap_or_default()
    }

    /// Waits (up to 10 s) for an element matching `css`.
    pub async fn find(&self, css: &str) -> Element {
        self.wait_for(css, Duration::from_secs(10)).await
    }

    /// Waits up to `timeout` for an element matching `css`.
    pub async fn wait_for(&self, css: &str, timeout: Duration) -> Element {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(e) = self.try_find(css).await {
                return e;
            }
            if Instant::now() > deadline {
                let body = self.page_text().await;
                panic!("no element {css:?} after {timeout:?}; the page says: {body}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits up to `timeout` until `script` (a function body) returns something truthy, and
    /// returns it.
    pub async fn wait_until(&self, script: &str, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let v = self.exec(script, json!([])).await;
            let truthy =
                !matches!(&v, Value::Null | Value::Bool(false)) && v != json!(0) && v != json!("");
            if truthy {
                return v;
            }
            if Instant::now() > deadline {
                let body = self.page_text().await;
                panic!("`{script}` still false after {timeout:?}; the page says: {body}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The page's text, shortened in the middle, for failure messages.
    async fn page_text(&self) -> String {
        let t = self
            .exec("return document.body.innerText", json!([]))
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let chars: Vec<char> = t.chars().collect();
        if chars.len() <= 3000 {
            return t;
        }
        let head: String = chars[..1500].iter().collect();
        let tail: String = chars[chars.len() - 1500..].iter().collect();
        format!("{head}\n[…]\n{tail}")
    }

    /// Runs `script` (a function body; `arguments` are `args`) in the page.
    pub async fn exec(&self, script: &str, args: Value) -> Value {
        self.must(
            "POST",
            "execute/sync",
            json!({"script": script, "args": args}),
        )
        .await
    }

    /// Runs `script` as an async function body whose last argument is the callback that
    /// returns its result (e.g. after a `fetch`).
    pub async fn exec_async(&self, script: &str, args: Value) -> Value {
        self.must(
            "POST",
            "execute/async",
            json!({"script": script, "args": args}),
        )
        .await
    }

    /// Moves the keyboard focus to `el`.
    pub async fn focus(&self, el: &Element) {
        self.exec("arguments[0].focus()", json!([{ ELEMENT: el.0 }]))
            .await;
    }

    /// Clicks `el`.
    pub async fn click(&self, el: &Element) {
        self.must("POST", &format!("element/{}/click", el.0), json!({}))
            .await;
    }

    /// Clicks the element matching `css` (waiting for it).
    pub async fn click_on(&self, css: &str) {
        let el = self.find(css).await;
        self.click(&el).await;
    }

    /// Types `text` into `el` (after clearing it).
    pub async fn type_into(&self, el: &Element, text: &str) {
        self.must("POST", &format!("element/{}/clear", el.0), json!({}))
            .await;
        self.must(
            "POST",
            &format!("element/{}/value", el.0),
            json!({ "text": text }),
        )
        .await;
    }

    /// Sets a form control's value (a select, or an input) and fires its change event.
    pub async fn set_value(&self, css: &str, value: &str) {
        let el = self.find(css).await;
        self.exec(
            "arguments[0].value = arguments[1]; arguments[0].dispatchEvent(new Event('change', {bubbles: true}));",
            json!([{ ELEMENT: el.0 }, value]),
        )
        .await;
    }

    /// The rendered text of `el`.
    pub async fn text(&self, el: &Element) -> String {
        self.must("GET", &format!("element/{}/text", el.0), Value::Null)
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// The text of the element matching `css` (waiting for it).
    pub async fn text_of(&self, css: &str) -> String {
        let el = self.find(css).await;
        self.text(&el).await
    }

    /// Presses keys (WebDriver key codes, e.g. `\u{E007}` for Enter) on the focused element.
    pub async fn keys(&self, el: &Element, keys: &str) {
        self.must(
            "POST",
            &format!("element/{}/value", el.0),
            json!({ "text": keys }),
        )
        .await;
    }

    /// Enters the frame `el`.
    pub async fn enter_frame(&self, el: &Element) {
        self.must("POST", "frame", json!({"id": { ELEMENT: el.0 }}))
            .await;
    }

    /// Back to the top-level page.
    pub async fn leave_frames(&self) {
        self.must("POST", "frame", json!({"id": null})).await;
    }

    /// Navigates back in history.
    pub async fn back(&self) {
        self.must("POST", "back", json!({})).await;
    }

    /// Navigates forward in history.
    pub async fn forward(&self) {
        self.must("POST", "forward", json!({})).await;
    }

    /// Writes a PNG of the viewport to `path`.
    pub async fn screenshot(&self, path: &Path) {
        let b64 = self.must("GET", "screenshot", Value::Null).await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(b64.as_str().unwrap_or_default())
            .expect("screenshot PNG");
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).expect("screenshot dir");
        }
        std::fs::write(path, png).expect("write screenshot");
    }

    /// The browser console's messages since the last call (level and text).
    pub async fn console(&self) -> Vec<(String, String)> {
        self.cmd("POST", "se/log", json!({"type": "browser"}))
            .await
            .ok()
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default()
            .into_iter()
            .map(|e| {
                (
                    e["level"].as_str().unwrap_or_default().to_owned(),
                    e["message"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect()
    }

    /// Ends the session and stops chromedriver.
    pub async fn quit(self) {
        let _ = self.cmd("DELETE", "", Value::Null).await;
        // Drop ends the process group.
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // chromedriver, Chromium and its helpers share the group chromedriver leads.
        if let Some(pid) = i32::try_from(self.driver.id())
            .ok()
            .and_then(rustix::process::Pid::from_raw)
        {
            let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
        }
        let _ = self.driver.wait();
    }
}

//! The web console `/ui` in a real browser: headless Chromium over WebDriver
//! (`apitrail_testkit::browser`) against the real server with seeded data. What the page shows
//! is compared with what the API answers for the same filter. Screenshots of each page go to
//! `$APITRAIL_SCREENSHOTS` (default: `<temp>/apitrail-console-screenshots`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use apitrail_testkit::browser::Browser;
use apitrail_testkit::{TestKey, TestServer, expect};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::reference::{Rng, now_ms, utc};
use crate::timeline::call;

pub(crate) fn shots_dir() -> PathBuf {
    std::env::var_os("APITRAIL_SCREENSHOTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("apitrail-console-screenshots"))
}

/// One seeded request log, as the test remembers it.
#[derive(Debug, Clone)]
pub(crate) struct Seeded {
    pub id: String,
    pub method: &'static str,
    pub route: &'static str,
    pub status: u16,
    pub user: &'static str,
}

/// Ingests `n` request logs spread over the last five hours: a few routes, methods, statuses,
/// users and keys, some with bodies.
pub(crate) async fn seed(server: &TestServer, key: &TestKey, n: usize) -> Vec<Seeded> {
    // Seeded by the org, so that two orgs' records differ.
    let mut rng = Rng(key
        .org_id
        .bytes()
        .fold(17u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b))));
    let now = now_ms();
    let mut out = Vec::new();
    let mut batch = Vec::new();
    for i in 0..n {
        let route = rng.pick(&[
            "/v1/things",
            "/v1/things/{id}",
            "/v1/users/{id}",
            "/v1/search",
        ]);
        let method = rng.pick(&["GET", "GET", "GET", "POST", "DELETE"]);
        let status = rng.pick(&[200u16, 200, 200, 201, 204, 400, 404, 429, 500, 503]);
        let user = rng.pick(&["u_ada", "u_bob", "u_cy"]);
        let id = rng.uuid();
        let path = route.replace("{id}", &format!("{}", rng.below(1000)));
        let mut rec = json!({
            "id": id,
            "method": method,
            "path": path,
            "route_pattern": route,
            "status_code": status,
            "created_at": utc(now - 60_000 - (i as i64) * 5 * 3_600_000 / n as i64),
            "duration_ms": 3 + rng.below(400),
            "auth_type": rng.pick(&["api_key", "session"]),
            "user_id": user,
            "api_key_id": rng.pick(&["key_live", "key_test"]),
            "request_id": format!("req_console_{i}"),
            "user_agent": "console-test/1.0",
        });
        if method == "POST" {
            rec["request_body"] = json!({"name": format!("thing {i}"), "size": i});
            rec["response_body"] = json!({"id": format!("thing_{i}"), "ok": status < 400});
        }
        batch.push(rec);
        out.push(Seeded {
            id,
            method,
            route,
            status,
            user,
        });
    }
    server
        .ingest(&key.secret, &Value::Array(batch), StatusCode::ACCEPTED)
        .await;
    out
}

/// The definition `notify` and one record triggered with `request_id` (the timeline tests'
/// fixtures).
pub(crate) async fn an_action(server: &TestServer, key: &TestKey, request_id: &str) -> String {
    crate::timeline::notify_definition(server, key).await;
    crate::timeline::trigger(server, key, request_id).await
}

/// The ids of the rows of the table `css` shows.
pub(crate) async fn row_ids(b: &Browser, css: &str) -> Vec<String> {
    let v = b
        .exec(
            "return Array.from(document.querySelectorAll(arguments[0] + ' tbody tr')).map(r => r.dataset.id)",
            json!([css]),
        )
        .await;
    serde_json::from_value(v).unwrap()
}

fn api_ids(page: &Value, field: &str) -> Vec<String> {
    page[field]
        .as_array()
        .unwrap_or_else(|| panic!("no {field} in {page}"))
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_owned())
        .collect()
}

/// Waits until the table `css` shows exactly `want` (the page re-renders after each step).
pub(crate) async fn wait_rows(b: &Browser, css: &str, want: &[String], what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let have = row_ids(b, css).await;
        if have == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: the table shows {} rows {:?}…, the API {} rows {:?}…",
            have.len(),
            have.iter().take(3).collect::<Vec<_>>(),
            want.len(),
            want.iter().take(3).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits for a finished download whose name ends with `ext`, and returns its text.
async fn downloaded(b: &Browser, ext: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok(dir) = std::fs::read_dir(&b.downloads) {
            for e in dir.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.ends_with(ext) {
                    let text = std::fs::read_to_string(e.path()).unwrap();
                    std::fs::remove_file(e.path()).unwrap();
                    return text;
                }
            }
        }
        assert!(Instant::now() < deadline, "no {ext} download appeared");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Browser console messages that mean the page broke: script errors and CSP refusals.
pub(crate) async fn assert_no_page_errors(b: &Browser) {
    let bad: Vec<_> = b
        .console()
        .await
        .into_iter()
        .filter(|(level, msg)| {
            level == "SEVERE"
                && !msg.contains("Failed to load resource")
                && !msg.contains("favicon")
        })
        .collect();
    assert!(bad.is_empty(), "the page logged errors: {bad:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_signs_in_filters_pages_opens_tails_charts_and_exports() {
    let server = TestServer::start().await;
    let key = server.org_with_key("4242").await;
    let seeded = seed(&server, &key, 240).await;
    let traced = &seeded[7];
    let record_id = an_action(&server, &key, "req_console_7").await;
    let shots = shots_dir();
    let b = Browser::start().await;
    let ui = format!("{}/ui", server.base);

    // A wrong key gets a clear error, and nothing is kept.
    b.goto(&ui).await;
    let input = b.find("#signin-key").await;
    b.type_into(&input, "atk_0000000000000000000000000000000000000000")
        .await;
    b.click_on("#signin-submit").await;
    let msg = b.text_of("#signin-message").await;
    assert!(
        msg.contains("not accepted") && msg.contains("atk_"),
        "the wrong-key message says what to do: {msg}"
    );
    let kept = b
        .exec(
            "return sessionStorage.getItem('apitrail.credential')",
            json!([]),
        )
        .await;
    assert_eq!(kept, Value::Null, "a refused key is not kept");
    b.screenshot(&shots.join("signin-error.png")).await;

    // Signing in shows the newest request logs, as /v1/logs lists them.
    let input = b.find("#signin-key").await;
    b.type_into(&input, &key.secret).await;
    b.click_on("#signin-submit").await;
    b.find("#logs-table tbody tr").await;
    assert!(
        !b.url().await.contains(&key.secret),
        "the key never reaches the address"
    );
    let first = server.logs(&key.secret, "limit=50").await;
    wait_rows(&b, "#logs-table", &api_ids(&first, "data"), "first page").await;
    assert_eq!(b.text_of("#org-name").await, "Org 4242");

    // The charts draw the stats of the data: every record is in the last 24 hours.
    b.wait_until(
        "return document.querySelector('#chart-volume[data-drawn] canvas') && document.querySelector('#chart-latency[data-drawn] canvas')",
        Duration::from_secs(10),
    )
    .await;
    let count = |v: Value| v.as_str().unwrap().parse::<usize>().unwrap();
    let figures = b
        .exec(
            "const d = document.getElementById('chart-volume').dataset; return [d.count, d.errors4xx, d.errors5xx]",
            json!([]),
        )
        .await;
    let in_class = |c: u16| seeded.iter().filter(|s| s.status / 100 == c).count();
    assert_eq!(count(figures[0].clone()), seeded.len(), "volume total");
    assert_eq!(count(figures[1].clone()), in_class(4), "4xx total");
    assert_eq!(count(figures[2].clone()), in_class(5), "5xx total");
    // The route breakdown: the per-route counts of the data.
    b.find("#breakdown-table tbody tr").await;
    let shown = b
        .exec(
            "return Array.from(document.querySelectorAll('#breakdown-table tbody tr')).map(r => [r.dataset.route, r.children[1].textContent])",
            json!([]),
        )
        .await;
    let mut want: BTreeMap<String, usize> = BTreeMap::new();
    for s in &seeded {
        *want.entry(s.route.to_owned()).or_default() += 1;
    }
    let have: BTreeMap<String, usize> = shown
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p[0].as_str().unwrap().to_owned(), count(p[1].clone())))
        .collect();
    assert_eq!(have, want, "the breakdown by route");
    b.screenshot(&shots.join("logs.png")).await;

    // Filters: the table shows what /v1/logs answers for the same filter, and the address
    // holds it.
    b.set_value("#logs-filters-method", "GET").await;
    let lo = b.find("#logs-filters-status_min").await;
    b.type_into(&lo, "400").await;
    let hi = b.find("#logs-filters-status_max").await;
    b.type_into(&hi, "599").await;
    b.click_on("#logs-filters-apply").await;
    b.wait_until(
        "return location.search.includes('method=GET') && location.search.includes('status_min=400')",
        Duration::from_secs(5),
    )
    .await;
    let filtered = server
        .logs(
            &key.secret,
            "limit=50&method=GET&status_min=400&status_max=599",
        )
        .await;
    let want_ids = api_ids(&filtered, "data");
    assert!(!want_ids.is_empty());
    wait_rows(&b, "#logs-table", &want_ids, "GET 4xx/5xx").await;
    let expect_n = seeded
        .iter()
        .filter(|s| s.method == "GET" && s.status >= 400)
        .count();
    b.wait_until(
        &format!("return document.getElementById('chart-volume').dataset.count === '{expect_n}'"),
        Duration::from_secs(10),
    )
    .await;

    // Back returns to the unfiltered view; forward to the filtered one.
    b.back().await;
    wait_rows(&b, "#logs-table", &api_ids(&first, "data"), "after back").await;
    b.forward().await;
    wait_rows(&b, "#logs-table", &want_ids, "after forward").await;
    b.click_on("#logs-filters-reset").await;
    wait_rows(&b, "#logs-table", &api_ids(&first, "data"), "after reset").await;

    // Keyset paging forward and back.
    let cursor = first["pagination"]["next_cursor"].as_str().unwrap();
    let second = server
        .logs(&key.secret, &format!("limit=50&cursor={cursor}"))
        .await;
    b.click_on("#logs-pager-next").await;
    wait_rows(&b, "#logs-table", &api_ids(&second, "data"), "page 2").await;
    let cursor2 = second["pagination"]["next_cursor"].as_str().unwrap();
    let third = server
        .logs(&key.secret, &format!("limit=50&cursor={cursor2}"))
        .await;
    b.click_on("#logs-pager-next").await;
    wait_rows(&b, "#logs-table", &api_ids(&third, "data"), "page 3").await;
    b.click_on("#logs-pager-prev").await;
    wait_rows(
        &b,
        "#logs-table",
        &api_ids(&second, "data"),
        "back to page 2",
    )
    .await;
    b.click_on("#logs-pager-prev").await;
    wait_rows(
        &b,
        "#logs-table",
        &api_ids(&first, "data"),
        "back to page 1",
    )
    .await;

    // Sorting by duration, longest first.
    b.click_on("#sort-duration_ms").await;
    let by_duration = server
        .logs(&key.secret, "limit=50&sort_by=duration_ms&sort_dir=desc")
        .await;
    wait_rows(
        &b,
        "#logs-table",
        &api_ids(&by_duration, "data"),
        "by duration",
    )
    .await;

    // A request's detail (every field, bodies) and its timeline. The traced record is a
    // POST or not; pick a POST for the bodies.
    let post = seeded.iter().find(|s| s.method == "POST").unwrap();
    b.goto(&format!("{ui}?page=logs&sel={}", post.id)).await;
    let body = b.text_of("#request-body").await;
    assert!(
        body.contains("\"name\": \"thing "),
        "the request body, pretty-printed: {body}"
    );
    assert_eq!(
        b.text_of("#detail dd[data-field='user_id']").await,
        post.user
    );
    b.screenshot(&shots.join("logs-detail.png")).await;
    b.goto(&format!("{ui}?page=logs&sel={}", traced.id)).await;
    b.click_on("#timeline-link").await;
    b.find("#timeline").await;
    assert_eq!(
        row_ids(&b, "#timeline-logs").await,
        vec![traced.id.clone()],
        "the timeline's request log"
    );
    assert_eq!(
        row_ids(&b, "#timeline-actions").await,
        vec![record_id.clone()],
        "the action record the request made"
    );
    assert!(
        b.url()
            .await
            .contains("page=timeline&request_id=req_console_7")
    );
    assert!(
        !b.text_of("#timeline").await.contains("were cut"),
        "nothing was truncated"
    );
    b.screenshot(&shots.join("timeline.png")).await;
    // A request log of the timeline opens in the logs page's detail.
    b.click_on(&format!("#timeline-logs tr[data-id='{}']", traced.id))
        .await;
    assert_eq!(
        b.text_of("#detail dd[data-field='request_id']").await,
        "req_console_7"
    );

    // Live tail: a record ingested now appears within 2 s.
    b.goto(&format!("{ui}?page=logs")).await;
    b.find("#logs-table tbody tr").await;
    b.click_on("#tail-toggle").await;
    b.wait_until(
        "return document.getElementById('tail-status').dataset.state === 'live'",
        Duration::from_secs(10),
    )
    .await;
    let fresh = uuid::Uuid::now_v7().to_string();
    server
        .ingest(
            &key.secret,
            &json!([{"id": fresh, "method": "PUT", "path": "/v1/things/live", "status_code": 200,
                      "created_at": utc(now_ms()), "duration_ms": 12}]),
            StatusCode::ACCEPTED,
        )
        .await;
    let ingested = Instant::now();
    b.wait_for(
        &format!("#logs-table tbody tr.new[data-id='{fresh}']"),
        Duration::from_secs(2),
    )
    .await;
    eprintln!("live tail row after {:?}", ingested.elapsed());
    b.click_on("#tail-toggle").await;

    // Export of the current filter: the downloaded CSV holds exactly the filtered rows.
    b.goto(&format!("{ui}?page=logs&method=POST&range=all"))
        .await;
    b.find("#logs-table tbody tr").await;
    b.click_on("#export-csv").await;
    let csv_text = downloaded(&b, ".csv").await;
    let mut reader = csv::Reader::from_reader(csv_text.as_bytes());
    let headers = reader.headers().unwrap().clone();
    let id_col = headers.iter().position(|h| h == "id").unwrap();
    let mut got: Vec<String> = reader
        .records()
        .map(|r| r.unwrap()[id_col].to_owned())
        .collect();
    got.sort();
    let mut want: Vec<String> = seeded
        .iter()
        .filter(|s| s.method == "POST")
        .map(|s| s.id.clone())
        .collect();
    want.sort();
    assert_eq!(got, want, "the CSV export of method=POST");
    b.click_on("#export-ndjson").await;
    let nd = downloaded(&b, ".ndjson").await;
    assert_eq!(nd.lines().count(), want.len(), "the NDJSON export");

    // The audit log: entries as /v1/audit-log lists them, the chain verified, details shown.
    b.click_on("#tab-audit").await;
    b.find("#audit-table tbody tr").await;
    let audit = expect(
        server
            .get("/v1/audit-log?limit=50", &key.secret)
            .send()
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await;
    wait_rows(&b, "#audit-table", &api_ids(&audit, "audit_log"), "audit").await;
    b.wait_until(
        "return document.getElementById('verify-status').textContent.startsWith('verified')",
        Duration::from_secs(10),
    )
    .await;
    let definition_entry = audit["audit_log"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["resource_type"] == "action_definition")
        .expect("the definition's audit entry");
    b.click_on(&format!(
        "#audit-table tr[data-id='{}']",
        definition_entry["id"].as_str().unwrap()
    ))
    .await;
    let details = b.text_of("#audit-details").await;
    assert!(
        details.contains("\n  \""),
        "details are pretty-printed JSON: {details}"
    );
    b.screenshot(&shots.join("audit.png")).await;

    // Action records: the record, its state and events.
    b.click_on("#tab-actions").await;
    b.find("#actions-table tbody tr").await;
    assert_eq!(row_ids(&b, "#actions-table").await, vec![record_id.clone()]);
    b.click_on(&format!("#actions-table tr[data-id='{record_id}']"))
        .await;
    b.find("#action-events tbody tr").await;
    let kinds = b
        .exec(
            "return Array.from(document.querySelectorAll('#action-events tbody tr')).map(r => r.children[0].textContent)",
            json!([]),
        )
        .await;
    assert_eq!(
        kinds[0], "created",
        "the record's events, oldest first: {kinds}"
    );
    assert!(b.text_of("#action-input").await.contains("\"n\": 1"));
    b.screenshot(&shots.join("actions.png")).await;

    // Dark theme and phone width stay readable (screenshots), and the theme sticks.
    b.goto(&format!("{ui}?page=logs")).await;
    b.find("#logs-table tbody tr").await;
    b.click_on("#theme").await;
    b.find("#logs-table tbody tr").await;
    let theme = b
        .exec("return document.documentElement.dataset.theme", json!([]))
        .await;
    b.screenshot(&shots.join(format!("logs-{}.png", theme.as_str().unwrap())))
        .await;
    b.resize(390, 844).await;
    b.goto(&format!("{ui}?page=logs")).await;
    b.find("#logs-table tbody tr").await;
    let overflow = b
        .exec(
            "return document.documentElement.scrollWidth - document.documentElement.clientWidth",
            json!([]),
        )
        .await;
    assert!(
        overflow.as_i64().unwrap() <= 0,
        "no sideways scrolling of the page at phone width (the table scrolls in its box): {overflow}"
    );
    b.screenshot(&shots.join("logs-phone.png")).await;

    // Keyboard: '/' focuses the first filter.
    b.resize(1280, 900).await;
    let body = b.find("body").await;
    b.keys(&body, "/").await;
    let focused = b.exec("return document.activeElement.id", json!([])).await;
    assert_eq!(focused, "logs-filters-range");
    // Arrow keys move between rows and Enter opens the focused one.
    let rows = row_ids(&b, "#logs-table").await;
    let first_row = b.find("#logs-table tbody tr").await;
    b.focus(&first_row).await;
    b.keys(&first_row, "\u{E015}").await;
    let second = b
        .exec("return document.activeElement.dataset.id", json!([]))
        .await;
    assert_eq!(second, rows[1].as_str(), "ArrowDown moves to the next row");
    let focused_row = b
        .find(&format!("#logs-table tr[data-id='{}']", rows[1]))
        .await;
    b.keys(&focused_row, "\u{E007}").await;
    b.wait_until(
        &format!("return location.search.includes('sel={}')", rows[1]),
        Duration::from_secs(5),
    )
    .await;
    b.find("#detail dd[data-field='id']").await;
    let body = b.find("body").await;
    b.keys(&body, "\u{E00C}").await;
    b.wait_until(
        "return !location.search.includes('sel=')",
        Duration::from_secs(5),
    )
    .await;

    assert_no_page_errors(&b).await;
    // Signing out forgets the key.
    b.click_on("#signout").await;
    b.find("#signin-key").await;
    let kept = b
        .exec(
            "return sessionStorage.getItem('apitrail.credential')",
            json!([]),
        )
        .await;
    assert_eq!(kept, Value::Null);
    eprintln!("console screenshots in {}", shots.display());
    b.quit().await;
    server.stop().await;
}

#[tokio::test]
async fn the_console_is_served_with_a_strict_policy() {
    let server = TestServer::start().await;
    let resp = server.request(Method::GET, "/ui").send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let h = |n: &str| {
        resp.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let csp = h("content-security-policy");
    for part in [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "connect-src 'self'",
        "frame-ancestors 'none'",
        "form-action 'none'",
    ] {
        assert!(csp.contains(part), "CSP lacks {part}: {csp}");
    }
    assert!(!csp.contains("unsafe"), "{csp}");
    assert_eq!(h("x-frame-options"), "DENY");
    assert_eq!(h("referrer-policy"), "no-referrer");
    assert_eq!(h("cache-control"), "no-store");
    let page = resp.text().await.unwrap();
    assert!(page.contains("/ui/assets/app.js"));

    // Assets: gzip when asked, 304 when current, 404 for anything else.
    let js = server
        .request(Method::GET, "/ui/assets/app.js")
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(js.status(), StatusCode::OK);
    assert_eq!(js.headers()["content-encoding"], "gzip");
    assert!(
        js.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/javascript")
    );
    let etag = js.headers()["etag"].clone();
    let again = server
        .request(Method::GET, "/ui/assets/app.js")
        .header("if-none-match", etag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
    for missing in [
        "/ui/assets/nope.js",
        "/ui/assets/index.html",
        "/ui/assets/..%2Fapp.js",
    ] {
        let r = server.request(Method::GET, missing).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{missing}");
    }
    server.stop().await;
}

/// The console's user and API key filters: `/v1/logs`, its stats and its export filter by
/// `user_id` and `api_key_id` (apitrail's extension of the logs dialect's filters).
#[tokio::test]
async fn logs_stats_and_export_filter_by_user_and_api_key() {
    let server = TestServer::start().await;
    let key = server.org_with_key("4343").await;
    let seeded = seed(&server, &key, 120).await;
    let want: Vec<&Seeded> = seeded.iter().filter(|s| s.user == "u_bob").collect();
    let page = server.logs(&key.secret, "limit=100&user_id=u_bob").await;
    let mut have = api_ids(&page, "data");
    have.sort();
    let mut ids: Vec<String> = want.iter().map(|s| s.id.clone()).collect();
    ids.sort();
    assert_eq!(have, ids, "user_id filter");
    let stats = expect(
        server
            .get(
                "/v1/logs/stats?interval=1h&user_id=u_bob&api_key_id=nope",
                &key.secret,
            )
            .send()
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await;
    assert_eq!(stats["series"][0]["total"]["count"], 0, "both filters hold");
    let stats = expect(
        server
            .get("/v1/logs/stats?interval=1h&user_id=u_bob", &key.secret)
            .send()
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await;
    assert_eq!(stats["series"][0]["total"]["count"], want.len());
    let export = server
        .get(
            "/v1/logs/export?format=ndjson&api_key_id=key_live",
            &key.secret,
        )
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let n = export
        .lines()
        .filter(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            assert_eq!(v["api_key_id"], "key_live");
            true
        })
        .count();
    assert!(n > 0 && n < seeded.len(), "{n} of {}", seeded.len());
    server.stop().await;
}

/// A platform's page on another origin that embeds the console with a viewer link.
async fn embedding_page(listener: tokio::net::TcpListener, src: String) {
    let page = format!(
        "<!doctype html><title>Acme customer portal</title><h1>Your API activity</h1>\
         <iframe id=\"console\" src=\"{src}\" width=\"1200\" height=\"720\" style=\"border:1px solid #ccc\"></iframe>"
    );
    let app = axum::Router::new().route(
        "/embed",
        axum::routing::get(move || {
            let page = page.clone();
            async move { axum::response::Html(page) }
        }),
    );
    axum::serve(listener, app).await.unwrap();
}

async fn viewer_token(server: &TestServer, key: &TestKey, body: Value) -> Value {
    call(
        server,
        &key.secret,
        Method::POST,
        "/v1/viewer-tokens",
        &body,
        None,
        StatusCode::CREATED,
    )
    .await
}

/// What a fetch from inside the page gets with the page's own credential.
async fn status_from_page(b: &Browser, method: &str, path: &str) -> u64 {
    b.exec_async(
        "const [method, path, done] = arguments;
         fetch(path, {method, headers: {Authorization: 'Bearer ' + sessionStorage.getItem('apitrail.credential'),
                                        'content-type': 'application/json'},
                      body: method === 'GET' ? undefined : '[]'})
           .then(r => done(r.status), e => done(String(e)));",
        json!([method, path]),
    )
    .await
    .as_u64()
    .unwrap_or_else(|| panic!("{method} {path} did not answer"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_link_in_a_frame_on_another_origin_shows_only_its_org_kinds_and_filter() {
    use apitrail_api::console::FrameAncestors;
    use apitrail_testkit::Options;

    let embed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let embed_port = embed.local_addr().unwrap().port();
    let server = TestServer::start_with(Options {
        ui_frame_ancestors: FrameAncestors::parse(&format!("http://127.0.0.1:{embed_port}"))
            .unwrap(),
        ..Options::default()
    })
    .await;
    let key = server.org_with_key("5151").await;
    let seeded = seed(&server, &key, 150).await;
    // Another org with a user of the same name: never shown.
    let other = server.org_with_key("6161").await;
    let others = seed(&server, &other, 30).await;
    let created = viewer_token(
        &server,
        &key,
        json!({"ttl_seconds": 600, "kinds": ["request_logs"], "filter": {"user_id": "u_bob"}}),
    )
    .await;
    let token = created["token"].as_str().unwrap().to_owned();
    let src = format!("{}/ui?viewer_token={token}", server.base);
    tokio::spawn(embedding_page(embed, src));

    let b = Browser::start().await;
    b.goto(&format!("http://127.0.0.1:{embed_port}/embed"))
        .await;
    let frame = b.find("#console").await;
    b.enter_frame(&frame).await;
    b.find("#logs-table tbody tr").await;
    let address = b.exec("return location.href", json!([])).await;
    assert!(
        !address.as_str().unwrap().contains("viewer_token"),
        "the token is taken out of the address: {address}"
    );
    // Only its org, only its user: what /v1/logs answers the org key for user_id=u_bob.
    let want = server.logs(&key.secret, "limit=50&user_id=u_bob").await;
    wait_rows(
        &b,
        "#logs-table",
        &api_ids(&want, "data"),
        "the viewer's first page",
    )
    .await;
    let bobs: Vec<&String> = seeded
        .iter()
        .filter(|s| s.user == "u_bob")
        .map(|s| &s.id)
        .collect();
    for id in row_ids(&b, "#logs-table").await {
        assert!(
            bobs.contains(&&id),
            "{id} is not one of the org's u_bob records"
        );
        assert!(!others.iter().any(|o| o.id == id), "{id} is another org's");
    }
    b.wait_until(
        &format!(
            "return document.getElementById('chart-volume').dataset.count === '{}'",
            bobs.len()
        ),
        Duration::from_secs(10),
    )
    .await;
    let badge = b.text_of("#viewer-badge").await;
    assert!(badge.contains("user_id=u_bob"), "{badge}");
    let hidden = b
        .exec(
            "return [document.getElementById('tab-audit').hidden, document.getElementById('tab-actions').hidden]",
            json!([]),
        )
        .await;
    assert_eq!(hidden, json!([true, true]), "only the kinds it may read");
    // The forced filter is shown and fixed; asking the API for another user from the page
    // finds nothing, never that user's records.
    let fixed = b
        .exec(
            "const i = document.getElementById('logs-filters-user_id'); return [i.value, i.disabled]",
            json!([]),
        )
        .await;
    assert_eq!(fixed, json!(["u_bob", true]));
    let found = b
        .exec_async(
            "const done = arguments[0];
             fetch('/v1/logs?user_id=u_ada', {headers: {Authorization: 'Bearer ' + sessionStorage.getItem('apitrail.credential')}})
               .then(r => r.json()).then(b => done(b.data.length), e => done(String(e)));",
            json!([]),
        )
        .await;
    assert_eq!(found, 0, "another user's records through the viewer link");
    b.leave_frames().await;
    b.screenshot(&shots_dir().join("viewer-embed.png")).await;
    b.enter_frame(&b.find("#console").await).await;
    // Write routes and other kinds are closed to it, whatever the page tries.
    for (method, path) in [
        ("POST", "/v1/ingest/requests"),
        ("POST", "/v1/api-keys"),
        ("POST", "/v1/viewer-tokens"),
        ("GET", "/v1/audit-log"),
        ("GET", "/v1/orgs/5151/actions/records"),
    ] {
        assert_eq!(
            status_from_page(&b, method, path).await,
            403,
            "{method} {path}"
        );
    }
    assert_eq!(status_from_page(&b, "GET", "/v1/logs").await, 200);

    // Revoked: the next read is refused and the console says so.
    call(
        &server,
        &key.secret,
        Method::DELETE,
        &format!("/v1/viewer-tokens/{}", created["id"].as_str().unwrap()),
        &Value::Null,
        None,
        StatusCode::NO_CONTENT,
    )
    .await;
    b.click_on("#logs-filters-reset").await;
    let msg = b.text_of("#signin-message").await;
    assert!(msg.contains("refused"), "{msg}");
    assert_eq!(status_from_page(&b, "GET", "/v1/logs").await, 401);
    b.leave_frames().await;

    // A page of an origin not allowed cannot frame it (localhost is another origin than
    // 127.0.0.1).
    b.goto(&format!("http://localhost:{embed_port}/embed"))
        .await;
    let frame = b.find("#console").await;
    b.enter_frame(&frame).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        b.try_find("#view").await.is_none(),
        "the console rendered inside a page of an origin --ui-frame-ancestors does not name"
    );
    b.leave_frames().await;
    let refusals: Vec<_> = b
        .console()
        .await
        .into_iter()
        .filter(|(_, m)| m.contains("frame-ancestors") && m.contains("blocked"))
        .collect();
    assert_eq!(
        refusals.len(),
        1,
        "Chromium refused the frame by the CSP: {refusals:?}"
    );

    // Expiry: a link that expires while it is open stops working.
    let (secret, expires) = short_lived_viewer(&server, "5151", 3_000).await;
    b.goto(&format!("{}/ui?viewer_token={secret}", server.base))
        .await;
    b.find("#logs-table tbody tr").await;
    assert!(
        !b.exec(
            "return document.getElementById('tab-audit').hidden",
            json!([])
        )
        .await
        .as_bool()
        .unwrap(),
        "this one may read the audit log"
    );
    let wait = expires - now_ms() + 200;
    if wait > 0 {
        tokio::time::sleep(Duration::from_millis(wait as u64)).await;
    }
    b.click_on("#logs-filters-reset").await;
    let msg = b.text_of("#signin-message").await;
    assert!(msg.contains("expired"), "{msg}");
    assert_no_page_errors(&b).await;
    b.quit().await;
    server.stop().await;
}

/// A viewer token of `org` for request logs and the audit log that expires `ms` from now
/// (the API's shortest TTL is a minute, so it is made behind it); its secret and expiry.
async fn short_lived_viewer(server: &TestServer, org: &str, ms: i64) -> (String, i64) {
    use apitrail_model::{
        AuditEntry, OrgId, Secret, Timestamp, ViewerFilter, ViewerKind, ViewerToken, new_record_id,
    };
    let tenant = crate::http_support::tenant(server, org).await;
    let now = Timestamp::now();
    let token = ViewerToken {
        id: new_record_id(),
        org_id: OrgId::parse(org).unwrap(),
        kinds: [ViewerKind::RequestLogs, ViewerKind::AuditLog]
            .into_iter()
            .collect(),
        filter: ViewerFilter::default(),
        created_at: now,
        expires_at: now.add_millis(ms),
        revoked_at: None,
    };
    let secret = Secret::generate_viewer();
    let entry = AuditEntry {
        id: new_record_id(),
        user_id: None,
        action: "create".into(),
        resource_type: "viewer_token".into(),
        resource_id: Some(token.id.to_string()),
        details: None,
        ip_address: None,
        request_id: None,
        created_at: now,
    };
    server
        .store
        .create_viewer_token(&tenant, &token, &secret.hash(), &entry, 1_000)
        .await
        .unwrap();
    (secret.expose().to_owned(), token.expires_at.millis())
}

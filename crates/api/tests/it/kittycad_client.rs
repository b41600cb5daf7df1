//! The official `kittycad` Python client (PyPI) against a live apitrail (SPEC §3.1): it lists
//! (auto-paging through `next_page`), sorts, and fetches single calls through the zoo
//! dialect without error (`get_api_call_for_org`, `get_api_call_for_user`, and `get_api_call`
//! on `/api-calls/{id}`), and sees exactly the records that were ingested.
//!
//! `./scripts/test` installs the pinned client (`tests/python/requirements.txt`) into a
//! throwaway virtualenv and names its interpreter in `APITRAIL_KITTYCAD_PYTHON`.

#![allow(clippy::unwrap_used)]

use std::process::Command;

use apitrail_testkit::{TestServer, expect};
use reqwest::StatusCode;
use serde_json::{Value, json};

const ORG: &str = "2f1c7a3e-5b6d-4e8f-9a0b-1c2d3e4f5a6b";
const USER_1: &str = "d4507b0f-fa50-4abc-8919-ae2933f11ca1";
const USER_2: &str = "0b7e3c1a-7d2f-4c55-9a51-2f4c1e9d8b01";
const METHODS: [&str; 5] = ["GET", "POST", "PATCH", "PROPFIND", "DELETE"];

fn python() -> Option<String> {
    match std::env::var("APITRAIL_KITTYCAD_PYTHON") {
        Ok(p) if !p.is_empty() => Some(p),
        _ if std::env::var_os("APITRAIL_SKIP_KITTYCAD").is_some() => None,
        _ => panic!(
            "APITRAIL_KITTYCAD_PYTHON is not set: run ./scripts/test, which installs the \
             kittycad client into a throwaway virtualenv, or set APITRAIL_SKIP_KITTYCAD=1 to \
             skip this test knowingly"
        ),
    }
}

struct Rec {
    id: String,
    created_ms: i64,
    user: &'static str,
    /// Whether it carries every optional field.
    full: bool,
}

fn ids(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not a list: {v}"))
        .iter()
        .map(|i| i.as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_python_client_lists_pages_and_fetches() {
    let Some(python) = python() else {
        eprintln!("APITRAIL_SKIP_KITTYCAD is set: the kittycad client test did not run");
        return;
    };
    let server = TestServer::start().await;
    server.create_org(ORG).await;
    let key = server
        .create_key_with(
            ORG,
            json!({"name": "python", "scopes": ["read", "write", "admin"],
                   "principal_type": "user", "principal_id": USER_1, "user_id": USER_1,
                   "email": "one@example.com"}),
        )
        .await;
    // 123 calls: more than one default page (100), creation times with ties, two users, every
    // optional field on some calls and none on others.
    let recs: Vec<Rec> = (0..123)
        .map(|i| Rec {
            id: format!("0190f5a2-0000-7000-8000-{i:012x}"),
            created_ms: 1_756_860_000_000 + (i * 37 % 123 / 2) * 1000,
            user: if i % 3 == 0 { USER_2 } else { USER_1 },
            full: i % 2 == 0,
        })
        .collect();
    let records: Vec<Value> = recs
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let mut rec = json!({
                "id": r.id,
                "method": METHODS[i % METHODS.len()],
                "path": format!("/things/{i}"),
                "status_code": 200 + (i % 4) as u16 * 100,
                "created_at": apitrail_model::Timestamp::from_millis(r.created_ms).unwrap().to_rfc3339(),
                "user_id": r.user,
            });
            if r.full {
                for (k, v) in [
                    ("route_pattern", json!("/things/{id}")),
                    ("query", json!("a=1")),
                    ("duration_ms", json!(i * 3)),
                    ("started_at", rec["created_at"].clone()),
                    ("completed_at", rec["created_at"].clone()),
                    ("client_ip", json!("2001:db8::7")),
                    ("user_agent", json!("zoo-cli/1.0")),
                    ("origin", json!("https://app.zoo.dev")),
                    ("email", json!("someone@example.com")),
                    ("api_key_id", json!(key.id)),
                    ("request_body", json!("{\"q\":1}")),
                    ("response_body", json!("{\"ok\":true}")),
                    ("price", json!(format!("{}.{:02}", i, i % 100))),
                    ("minutes", json!(i)),
                    ("seconds", json!(i * 60)),
                    ("stripe_invoice_item_id", json!("ii_1")),
                ] {
                    rec[k] = v;
                }
            }
            rec
        })
        .collect();
    server
        .ingest(&key.secret, &Value::Array(records), StatusCode::ACCEPTED)
        .await;
    let ordered = |user: Option<&str>, ascending: bool| {
        let mut v: Vec<&Rec> = recs
            .iter()
            .filter(|r| user.is_none_or(|u| r.user == u))
            .collect();
        v.sort_by(|a, b| (a.created_ms, &a.id).cmp(&(b.created_ms, &b.id)));
        if !ascending {
            v.reverse();
        }
        v.into_iter().map(|r| r.id.clone()).collect::<Vec<_>>()
    };

    // The newest call with every optional field, for the fetch.
    let mut full: Vec<&Rec> = recs.iter().filter(|r| r.full).collect();
    full.sort_by(|a, b| (b.created_ms, &b.id).cmp(&(a.created_ms, &a.id)));
    let fetch_id = full[0].id.clone();
    // Another user's newest call, for `get_api_call` with the admin key.
    let other_call = ordered(Some(USER_2), false)[0].clone();

    let output = Command::new(&python)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/python/kittycad_client.py"
        ))
        .env("APITRAIL_BASE_URL", &server.base)
        .env("APITRAIL_TOKEN", &key.secret)
        .env("APITRAIL_OTHER_USER", USER_2)
        .env("APITRAIL_FETCH_ID", &fetch_id)
        .env("APITRAIL_OTHER_CALL", &other_call)
        .env_remove("ZOO_HOST")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {python}: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "the kittycad client failed ({}):\n{}\n{stdout}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let seen: Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("the client printed no JSON ({e}): {stdout}"));

    assert_eq!(ids(&seen["org_desc"]), ordered(None, false));
    assert_eq!(ids(&seen["org_asc"]), ordered(None, true));
    assert_eq!(ids(&seen["org_default"]), ordered(None, false));
    assert_eq!(ids(&seen["user"]), ordered(Some(USER_1), false));
    assert_eq!(ids(&seen["user_me"]), ordered(Some(USER_1), false));
    assert_eq!(ids(&seen["user_by_id"]), ordered(Some(USER_2), false));
    // The client's model of the fetched call equals what apitrail serves (fields the
    // client does not model aside).
    let served = expect(
        server
            .get(&format!("/org/api-calls/{fetch_id}"), &key.secret)
            .send()
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await;
    let fetched = seen["fetched"].as_object().unwrap();
    assert_eq!(fetched["id"], fetch_id.as_str());
    for field in [
        "price",
        "duration",
        "ip_address",
        "started_at",
        "token",
        "minutes",
    ] {
        assert!(!fetched[field].is_null(), "{field} is set: {served}");
    }
    assert_eq!(fetched["token"], key.id.as_str());
    for (field, value) in fetched {
        match field.as_str() {
            "created_at" | "updated_at" | "started_at" | "completed_at" if !value.is_null() => {
                // Python prints the same instant with its own offset notation.
                let a = apitrail_model::Timestamp::parse(value.as_str().unwrap()).unwrap();
                let b = apitrail_model::Timestamp::parse(served[field].as_str().unwrap()).unwrap();
                assert_eq!(a, b, "{field}");
            }
            _ => assert_eq!(value, &served[field], "{field}"),
        }
    }
    assert_eq!(
        seen["fetched_own"],
        ordered(Some(USER_1), false)[0].as_str()
    );
    assert_eq!(
        seen["missing"],
        json!({"status": 404, "error_code": "not_found"})
    );
    // `get_api_call` (GET /api-calls/{id}) sees the same call, and another user's.
    assert_eq!(seen["fetched_any"], seen["fetched"]);
    assert_eq!(seen["fetched_other_user"], other_call.as_str());
    assert_eq!(
        seen["missing_any"],
        json!({"status": 404, "error_code": "not_found"})
    );
    server.stop().await;
}

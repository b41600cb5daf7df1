//! `apitrail proxy`, the real binary, in front of a real `apitrail serve` (its answers are
//! the upstream's), recording into the same data directory, read back through `serve`.

use std::time::{Duration, Instant};

use apitrail_testkit::expect;
use reqwest::StatusCode;
use serde_json::Value;

use crate::support::{At, apitrail, org_with_key, proxy, serve, stop};

#[test]
fn the_proxy_binary_records_every_exchange_into_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let at = At::Dir(dir.path());
    let secret = org_with_key(at, "acme", "read");
    let (server, base, _) = serve(at, &["--no-self-log"]);
    let routes = dir.path().join("routes.txt");
    std::fs::write(
        &routes,
        "# the upstream's routes\n/things/{id}\n/things/new\n",
    )
    .unwrap();
    let (proxy_child, proxy_base) = proxy(
        at,
        &[
            "--upstream",
            &base,
            "--org",
            "acme",
            "--routes",
            routes.to_str().unwrap(),
        ],
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let client = reqwest::Client::new();
        let resp = client
            .get(format!("{proxy_base}/healthz"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        // A 404 of the upstream's, in its envelope, passes through as it is.
        let resp = client
            .get(format!("{proxy_base}/things/7?color=red"))
            .header("x-api-key", "not-a-key-of-anyone")
            .send()
            .await
            .unwrap();
        let request_id = apitrail_testkit::header(&resp, "x-request-id").unwrap();
        let body = expect(resp, StatusCode::NOT_FOUND).await;
        assert_eq!(
            body["request_id"],
            request_id.as_str(),
            "the upstream saw the id"
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        let items = loop {
            let page = expect(
                client
                    .get(format!("{base}/v1/logs"))
                    .header("x-api-key", &secret)
                    .send()
                    .await
                    .unwrap(),
                StatusCode::OK,
            )
            .await;
            let items = page["data"].as_array().unwrap().clone();
            if items.len() >= 2 || Instant::now() > deadline {
                break items;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(items.len(), 2, "{items:?}");
        let find = |path: &str| -> &Value { items.iter().find(|i| i["path"] == path).unwrap() };
        assert_eq!(find("/healthz")["status_code"], 200);
        assert_eq!(find("/healthz")["auth_type"], "none");
        assert_eq!(find("/healthz")["route_pattern"], Value::Null);
        let thing = find("/things/7");
        assert_eq!(thing["status_code"], 404);
        assert_eq!(thing["route_pattern"], "/things/{id}");
        assert_eq!(thing["auth_type"], "api_key");
        assert_eq!(thing["request_id"], request_id.as_str());
    });
    stop(proxy_child);
    stop(server);
    // The fingerprint key was made beside the data, readable by its owner only.
    let key_file = dir.path().join("proxy-fingerprint.key");
    let key = std::fs::read_to_string(&key_file).unwrap();
    assert_eq!(key.trim().len(), 64);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&key_file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}

#[test]
fn proxy_start_up_errors_name_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let at = At::Dir(dir.path());
    let routes = dir.path().join("routes.txt");
    std::fs::write(&routes, "/a/{x}\n/a/{y}\n").unwrap();
    let cases: [(&[&str], &str); 4] = [
        (
            &[
                "proxy",
                "--upstream",
                "http://127.0.0.1:9",
                "--routes",
                routes.to_str().unwrap(),
            ],
            "line 2",
        ),
        (&["proxy", "--upstream", "ftp://x"], "--upstream"),
        (
            &[
                "proxy",
                "--upstream",
                "http://127.0.0.1:9",
                "--org",
                "no way",
            ],
            "--org",
        ),
        (
            &[
                "proxy",
                "--upstream",
                "http://127.0.0.1:9",
                "--trusted-proxy",
                "10.0.0.0/40",
            ],
            "--trusted-proxy",
        ),
    ];
    for (args, says) in cases {
        let out = apitrail(at, args);
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{args:?}: {err}");
    }
}

//! `apitrail proxy`, the real binary, in front of a real `apitrail serve` (its answers are
//! the upstream's), recording into the same data directory, read back through `serve`.

use std::time::{Duration, Instant};

use apitrail_testkit::expect;
use reqwest::StatusCode;
use serde_json::Value;

use crate::support::{
    At, apitrail, kill, org_with_key, proxy, proxy_with_admin, serve, serve_on, stop,
};

/// The first page of `/v1/logs` once it holds `n` records (or after 10 s, as it is).
async fn logs_when(client: &reqwest::Client, base: &str, secret: &str, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let page = expect(
            client
                .get(format!("{base}/v1/logs"))
                .header("x-api-key", secret)
                .send()
                .await
                .unwrap(),
            StatusCode::OK,
        )
        .await;
        let items = page["data"].as_array().unwrap().clone();
        if items.len() >= n || Instant::now() > deadline {
            return items;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

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
        let items = logs_when(&client, &base, &secret, 2).await;
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
    let not_pem = routes.to_str().unwrap();
    let cases: [(&[&str], &str); 6] = [
        (
            &[
                "proxy",
                "--upstream",
                "http://127.0.0.1:9",
                "--tls-cert",
                not_pem,
            ],
            "--tls-key",
        ),
        (
            &[
                "proxy",
                "--upstream",
                "http://127.0.0.1:9",
                "--tls-cert",
                not_pem,
                "--tls-key",
                not_pem,
            ],
            "--tls-cert",
        ),
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

/// `--tls-cert`/`--tls-key`: clients reach the proxy over HTTPS; the exchange is recorded.
#[test]
fn the_proxy_binary_terminates_tls() {
    use rcgen::{CertificateParams, KeyPair};
    let dir = tempfile::tempdir().unwrap();
    let at = At::Dir(dir.path());
    let secret = org_with_key(at, "acme", "read");
    let (server, base, _) = serve(at, &["--no-self-log"]);
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let (cert_file, key_file) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_file, cert.pem()).unwrap();
    std::fs::write(&key_file, key.serialize_pem()).unwrap();
    let (proxy_child, proxy_base) = proxy(
        at,
        &[
            "--upstream",
            &base,
            "--org",
            "acme",
            "--tls-cert",
            cert_file.to_str().unwrap(),
            "--tls-key",
            key_file.to_str().unwrap(),
        ],
    );
    let port = proxy_base
        .strip_prefix("https://127.0.0.1:")
        .unwrap_or_else(|| panic!("the banner names no https:// address: {proxy_base}"));
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let client = reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_der(cert.der()).unwrap())
            .build()
            .unwrap();
        let resp = client
            .get(format!("https://localhost:{port}/healthz"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        // Without trusting the certificate, the client refuses the proxy.
        assert!(
            reqwest::get(format!("https://localhost:{port}/healthz"))
                .await
                .is_err()
        );
        let items = logs_when(&client, &base, &secret, 1).await;
        assert_eq!(items.len(), 1, "{items:?}");
        assert_eq!(items[0]["path"], "/healthz");
        assert_eq!(items[0]["status_code"], 200);
    });
    stop(proxy_child);
    stop(server);
}

/// A loopback upstream for big transfers: `/bytes/N` streams N bytes (64 KiB frames, with a
/// Content-Length), anything else reads the whole request body and answers its length.
async fn big_upstream() -> std::net::SocketAddr {
    use std::convert::Infallible;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use http_body_util::BodyExt;
    use hyper::body::{Body, Bytes, Frame, SizeHint};

    struct Stream(u64);
    impl Body for Stream {
        type Data = Bytes;
        type Error = Infallible;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            static CHUNK: [u8; 65536] = [b'x'; 65536];
            if self.0 == 0 {
                return Poll::Ready(None);
            }
            let n = self.0.min(65536);
            self.0 -= n;
            Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(
                &CHUNK[..n as usize],
            )))))
        }
        fn is_end_stream(&self) -> bool {
            self.0 == 0
        }
        fn size_hint(&self) -> SizeHint {
            SizeHint::with_exact(self.0)
        }
    }

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    |req: hyper::Request<hyper::body::Incoming>| async move {
                        let body = if let Some(n) = req.uri().path().strip_prefix("/bytes/") {
                            Stream(n.parse().unwrap()).boxed()
                        } else {
                            let mut body = req.into_body();
                            let mut n = 0u64;
                            while let Some(frame) = body.frame().await {
                                if let Ok(data) = frame.unwrap().into_data() {
                                    n += data.len() as u64;
                                }
                            }
                            http_body_util::Full::new(Bytes::from(n.to_string())).boxed()
                        };
                        Ok::<_, Infallible>(hyper::Response::new(body))
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// The proxy's peak resident memory, from `/proc`.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// 200 MB each way through the real binary: bodies are streamed, so the proxy's memory
/// stays flat (its peak RSS under 100 MB), and both exchanges are recorded.
#[test]
fn two_hundred_megabytes_each_way_stream_in_flat_memory() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const SIZE: u64 = 200 * 1000 * 1000;
    let dir = tempfile::tempdir().unwrap();
    let at = At::Dir(dir.path());
    let secret = org_with_key(at, "acme", "read");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let upstream = rt.block_on(big_upstream());
    let (proxy_child, proxy_base) = proxy(
        at,
        &["--upstream", &format!("http://{upstream}"), "--org", "acme"],
    );
    let pid = proxy_child.id();
    let proxy_addr = proxy_base.trim_start_matches("http://").to_owned();
    rt.block_on(async {
        // Download, read chunk by chunk.
        let mut resp = reqwest::get(format!("{proxy_base}/bytes/{SIZE}")).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let mut got = 0u64;
        while let Some(chunk) = resp.chunk().await.unwrap() {
            got += chunk.len() as u64;
        }
        assert_eq!(got, SIZE);
        // Upload, written 64 KiB at a time.
        let mut stream = tokio::net::TcpStream::connect(&proxy_addr).await.unwrap();
        let head = format!(
            "POST /upload HTTP/1.1\r\nHost: test\r\nContent-Length: {SIZE}\r\nConnection: close\r\n\r\n"
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        let chunk = vec![b'y'; 65536];
        let mut left = SIZE;
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            stream.write_all(&chunk[..n]).await.unwrap();
            left -= n as u64;
        }
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.ends_with(&SIZE.to_string()), "{answer}");
    });
    let peak = peak_rss_kib(pid);
    eprintln!("the proxy's peak RSS: {peak} KiB");
    assert!(peak < 100 * 1024, "the proxy's peak RSS was {peak} KiB");
    stop(proxy_child);
    let (server, base, _) = serve(at, &["--no-self-log"]);
    rt.block_on(async {
        let page = expect(
            reqwest::Client::new()
                .get(format!("{base}/v1/logs"))
                .header("x-api-key", &secret)
                .send()
                .await
                .unwrap(),
            StatusCode::OK,
        )
        .await;
        let mut paths: Vec<_> = page["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| {
                (
                    i["path"].as_str().unwrap().to_owned(),
                    i["status_code"].as_u64(),
                )
            })
            .collect();
        paths.sort();
        assert_eq!(
            paths,
            [
                (format!("/bytes/{SIZE}"), Some(200)),
                ("/upload".to_owned(), Some(200))
            ]
        );
    });
    stop(server);
}

/// The figures of the proxy's `/metrics`: recorded, and dropped for any reason.
async fn recorded_and_dropped(admin: &str) -> (u64, u64) {
    let text = reqwest::get(format!("{admin}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let mut recorded = 0;
    let mut dropped = 0;
    for line in text.lines() {
        if let Some(v) = line.strip_prefix("apitrail_proxy_recorded_total ") {
            recorded = v.parse().unwrap();
        } else if line.starts_with("apitrail_proxy_dropped_total{") {
            dropped += line.rsplit(' ').next().unwrap().parse::<u64>().unwrap();
        }
    }
    (recorded, dropped)
}

/// The remote sink: records go to `serve`'s ingest API; `serve` is killed (SIGKILL) and
/// restarted on the same port mid-run. Batches sent again are never stored twice, records
/// beyond the buffer are dropped and counted, and every request is answered meanwhile.
/// (The buffer holds all of the first 20 records, so none is dropped while serve is up.)
#[test]
fn the_remote_sink_rides_out_serve_killed_and_restarted() {
    let dir = tempfile::tempdir().unwrap();
    let at = At::Dir(dir.path());
    let secret = org_with_key(at, "acme", "read,write");
    let (server, base, _) = serve(at, &["--no-self-log"]);
    let listen = base.trim_start_matches("http://").to_owned();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let upstream = rt.block_on(big_upstream());
    // The proxy keeps no store of its own: its data dir only holds the fingerprint key.
    let proxy_dir = tempfile::tempdir().unwrap();
    let (proxy_child, proxy_base, admin) = proxy_with_admin(
        At::Dir(proxy_dir.path()),
        &[
            "--upstream",
            &format!("http://{upstream}"),
            "--org",
            "acme",
            "--ingest-url",
            &base,
            "--ingest-key",
            &secret,
            "--buffer-records",
            "30",
            "--admin-listen",
            "127.0.0.1:0",
        ],
    );
    let admin = admin.unwrap();
    let client = reqwest::Client::new();
    let send = |from: usize, to: usize| {
        let client = client.clone();
        let proxy_base = proxy_base.clone();
        async move {
            for i in from..to {
                let resp = client
                    .post(format!("{proxy_base}/count?i={i}"))
                    .body("abc")
                    .send()
                    .await
                    .unwrap();
                assert_eq!(resp.status(), StatusCode::OK, "request {i}");
            }
        }
    };
    let wait_for = |total: u64| {
        let admin = admin.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let (recorded, dropped) = recorded_and_dropped(&admin).await;
                if recorded + dropped >= total {
                    return (recorded, dropped);
                }
                assert!(
                    Instant::now() < deadline,
                    "{recorded} + {dropped} < {total}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    rt.block_on(async {
        send(0, 20).await;
        assert_eq!(wait_for(20).await, (20, 0));
    });
    kill(server);
    // While serve is down the writer retries one batch (at most 30 records) and 30 more
    // wait: of 100 records, at least 40 are dropped.
    rt.block_on(send(20, 120));
    let (server, _, _) = serve_on(at, &listen, &["--no-self-log"]);
    let (recorded, dropped) = rt.block_on(wait_for(120));
    assert_eq!(recorded + dropped, 120);
    assert!(dropped >= 40, "{dropped} dropped");
    assert!(
        recorded >= 21,
        "the batch retried across the restart was stored"
    );
    rt.block_on(async {
        let page = expect(
            client
                .get(format!("{base}/v1/logs?limit=100"))
                .header("x-api-key", &secret)
                .send()
                .await
                .unwrap(),
            StatusCode::OK,
        )
        .await;
        let items = page["data"].as_array().unwrap();
        assert_eq!(items.len() as u64, recorded, "stored once each");
        let mut ids: Vec<&str> = items.iter().map(|i| i["id"].as_str().unwrap()).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len() as u64, recorded);
        let mut request_ids: Vec<&str> = items
            .iter()
            .map(|i| i["request_id"].as_str().unwrap())
            .collect();
        request_ids.sort_unstable();
        request_ids.dedup();
        assert_eq!(
            request_ids.len() as u64,
            recorded,
            "no exchange stored twice"
        );
    });
    stop(proxy_child);
    stop(server);
}

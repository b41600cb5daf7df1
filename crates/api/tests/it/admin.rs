//! The operator API and org key management over HTTP (SPEC §5, §11): orgs, keys, secrets
//! shown once, idempotent revocation, `/v1/api-keys` for admin-scoped org keys, and the audit
//! entries every mutation writes.

#![allow(clippy::unwrap_used)]

use crate::http_support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use apitrail_testkit::{TestServer, expect, expect_native_error};
use http_support::{audit_entries, key_works, send};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use uuid::Uuid;

const KEY_FIELDS: [&str; 12] = [
    "created_at",
    "email",
    "id",
    "last_used_at",
    "name",
    "org_id",
    "principal_id",
    "principal_type",
    "revoked_at",
    "scopes",
    "service_account_id",
    "user_id",
];

fn keys_of(v: &Value) -> Vec<String> {
    let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
    k.sort();
    k
}

/// RFC 3339 UTC with milliseconds and `Z`, as every timestamp apitrail prints.
fn assert_ms_z(v: &Value, what: &str) {
    let s = v.as_str().unwrap_or_else(|| panic!("{what}: {v}"));
    let b = s.as_bytes();
    assert!(
        s.len() == 24
            && b[4] == b'-'
            && b[10] == b'T'
            && b[19] == b'.'
            && s.ends_with('Z')
            && apitrail_model::Timestamp::parse(s).is_ok(),
        "{what}: {s}"
    );
}

fn is_secret(s: &str) -> bool {
    s.len() == 44 && s.starts_with("atk_") && s[4..].bytes().all(|b| b.is_ascii_alphanumeric())
}

/// Panics if `v` holds a `secret` member or any string that looks like a key secret.
fn assert_no_secret(v: &Value, what: &str) {
    match v {
        Value::Object(m) => {
            assert!(!m.contains_key("secret"), "{what}: {v}");
            for (k, x) in m {
                assert!(!k.contains("atk_"), "{what}: {v}");
                assert_no_secret(x, what);
            }
        }
        Value::Array(a) => a.iter().for_each(|x| assert_no_secret(x, what)),
        Value::String(s) => assert!(!s.contains("atk_"), "{what}: {s}"),
        _ => {}
    }
}

async fn op(
    server: &TestServer,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> reqwest::Response {
    let rb = server.operator(method, path);
    let rb = match body {
        Some(b) => rb.json(&b),
        None => rb,
    };
    rb.send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orgs_are_created_with_or_without_an_id() {
    let server = TestServer::start().await;
    for id in [
        "acme",
        "1234",
        "0190f5a2-7b3c-7def-8123-456789abcdef",
        "a.b:c_d-e",
    ] {
        let resp = op(
            &server,
            Method::POST,
            "/admin/v1/orgs",
            Some(json!({"id": id, "name": format!("Org {id}")})),
        )
        .await;
        let org = expect(resp, StatusCode::CREATED).await;
        assert_eq!(keys_of(&org), ["created_at", "id", "name"], "{org}");
        assert_eq!(org["id"], id);
        assert_eq!(org["name"], format!("Org {id}"));
        assert_ms_z(&org["created_at"], "created_at");
        // It reads back the same.
        let got = expect(
            op(&server, Method::GET, &format!("/admin/v1/orgs/{id}"), None).await,
            StatusCode::OK,
        )
        .await;
        assert_eq!(got, org);
    }
    let longest = "x".repeat(64);
    let org = expect(
        op(
            &server,
            Method::POST,
            "/admin/v1/orgs",
            Some(json!({"id": longest, "name": "Long"})),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    assert_eq!(org["id"], longest.as_str());
    // Without an id, a UUID (v7) is generated; two such orgs differ.
    let mut generated = BTreeSet::new();
    for _ in 0..2 {
        let org = expect(
            op(
                &server,
                Method::POST,
                "/admin/v1/orgs",
                Some(json!({"name": "Generated"})),
            )
            .await,
            StatusCode::CREATED,
        )
        .await;
        let id = Uuid::parse_str(org["id"].as_str().unwrap()).unwrap();
        assert_eq!(id.get_version_num(), 7, "{org}");
        assert_eq!(org["id"], id.to_string(), "lowercase hyphenated");
        generated.insert(id);
        let got = expect(
            op(&server, Method::GET, &format!("/admin/v1/orgs/{id}"), None).await,
            StatusCode::OK,
        )
        .await;
        assert_eq!(got, org);
    }
    assert_eq!(generated.len(), 2);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_org_creations_are_refused_by_field() {
    let server = TestServer::start().await;
    server.create_org("taken").await;
    let before = audit_entries(&server, "taken").await.len();
    let resp = op(
        &server,
        Method::POST,
        "/admin/v1/orgs",
        Some(json!({"id": "taken", "name": "Again"})),
    )
    .await;
    expect_native_error(resp, StatusCode::CONFLICT, "conflict", None).await;
    // The conflict changed nothing: same name, no new audit entry.
    let org = expect(
        op(&server, Method::GET, "/admin/v1/orgs/taken", None).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(org["name"], "Org taken");
    assert_eq!(audit_entries(&server, "taken").await.len(), before);

    for (body, param) in [
        // An empty id is not an absent one (SPEC §11).
        (json!({"id": "", "name": "n"}), "id"),
        (json!({"id": "a b", "name": "n"}), "id"),
        (json!({"id": "a/b", "name": "n"}), "id"),
        (json!({"id": "x".repeat(65), "name": "n"}), "id"),
        (json!({"id": "é", "name": "n"}), "id"),
        (json!({"id": 42, "name": "n"}), "id"),
        // An empty string is not an absent id (SPEC §11); the document's pattern says 1-64.
        (json!({"id": "", "name": "n"}), "id"),
        (json!({"id": "ok-id"}), "name"),
        (json!({"id": "ok-id", "name": ""}), "name"),
        (json!({"id": "ok-id", "name": "n".repeat(201)}), "name"),
        (
            json!({"id": "ok-id", "name": "n", "colour": "red"}),
            "colour",
        ),
        (json!({"id": "ok-id", "name": "n", "org_id": "x"}), "org_id"),
    ] {
        let resp = op(&server, Method::POST, "/admin/v1/orgs", Some(body.clone())).await;
        expect_native_error(
            resp,
            StatusCode::BAD_REQUEST,
            "invalid_request",
            Some(param),
        )
        .await;
    }
    // Bodies that are not a JSON object.
    // serde reads a struct from an array of its fields in order too; a body is an object.
    for raw in [
        "",
        "not json",
        "[]",
        "{\"id\":",
        r#"["from-an-array", "Array"]"#,
    ] {
        let resp = server
            .operator(Method::POST, "/admin/v1/orgs")
            .header("content-type", "application/json")
            .body(raw)
            .send()
            .await
            .unwrap();
        let (status, _, body) = http_support::split(resp).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{raw:?}: {body}");
        assert_eq!(body["error"]["code"], "invalid_request", "{raw:?}");
    }
    // None of the refused ids exists now.
    let list = expect(
        op(&server, Method::GET, "/admin/v1/orgs", None).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(list["data"].as_array().unwrap().len(), 1, "{list}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orgs_are_listed_in_pages() {
    let server = TestServer::start().await;
    let mut ids: Vec<String> = ["m-3", "b-2", "z-9", "a-1", "k-5", "c-7", "y-0"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    for id in &ids {
        server.create_org(id).await;
    }
    ids.sort();
    // The default page holds them all.
    let all = expect(
        op(&server, Method::GET, "/admin/v1/orgs", None).await,
        StatusCode::OK,
    )
    .await;
    let listed: Vec<&str> = all["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["id"].as_str().unwrap())
        .collect();
    assert_eq!(listed, ids);
    assert_eq!(
        all["pagination"],
        json!({"has_more": false, "next_cursor": null})
    );
    for limit in [1, 2, 3, 7, 8] {
        let mut seen = Vec::new();
        let mut cursor: Option<String> = None;
        let mut pages = 0;
        loop {
            let path = match &cursor {
                Some(c) => format!("/admin/v1/orgs?limit={limit}&cursor={c}"),
                None => format!("/admin/v1/orgs?limit={limit}"),
            };
            let page = expect(op(&server, Method::GET, &path, None).await, StatusCode::OK).await;
            let items = page["data"].as_array().unwrap();
            assert!(items.len() <= limit, "{page}");
            for o in items {
                assert_eq!(keys_of(o), ["created_at", "id", "name"]);
                seen.push(o["id"].as_str().unwrap().to_owned());
            }
            pages += 1;
            match page["pagination"]["next_cursor"].as_str() {
                Some(c) => {
                    assert_eq!(page["pagination"]["has_more"], true);
                    assert_eq!(items.len(), limit, "only the last page is short");
                    cursor = Some(c.to_owned());
                }
                None => {
                    assert_eq!(page["pagination"]["has_more"], false);
                    break;
                }
            }
            assert!(pages <= ids.len() + 1, "paging does not end");
        }
        assert_eq!(seen, ids, "limit {limit}");
    }
    for (q, param) in [
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("limit=-1", "limit"),
        ("limit=two", "limit"),
        ("cursor=%%%", "cursor"),
        ("cursor=!!notacursor", "cursor"),
    ] {
        let resp = op(&server, Method::GET, &format!("/admin/v1/orgs?{q}"), None).await;
        expect_native_error(
            resp,
            StatusCode::BAD_REQUEST,
            "invalid_parameter",
            Some(param),
        )
        .await;
    }
    for missing in ["nope", "a%20b", "0190f5a2-7b3c-7def-8123-456789abcdef"] {
        let resp = op(
            &server,
            Method::GET,
            &format!("/admin/v1/orgs/{missing}"),
            None,
        )
        .await;
        expect_native_error(resp, StatusCode::NOT_FOUND, "not_found", None).await;
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keys_secret_is_shown_once_and_never_again() {
    let server = TestServer::start().await;
    server.create_org("secrets").await;
    let body = json!({
        "name": "ci deploys",
        "scopes": ["write", "read"],
        "principal_type": "service_account",
        "principal_id": "sa_ci",
        "service_account_id": "sa_ci",
        "email": "ci@example.com",
    });
    let mut secrets = Vec::new();
    let mut ids = Vec::new();
    for _ in 0..3 {
        let created = expect(
            op(
                &server,
                Method::POST,
                "/admin/v1/orgs/secrets/api-keys",
                Some(body.clone()),
            )
            .await,
            StatusCode::CREATED,
        )
        .await;
        let mut fields = KEY_FIELDS.to_vec();
        fields.push("secret");
        fields.sort_unstable();
        assert_eq!(keys_of(&created), fields, "{created}");
        let secret = created["secret"].as_str().unwrap().to_owned();
        assert!(is_secret(&secret), "{secret}");
        let id = Uuid::parse_str(created["id"].as_str().unwrap()).unwrap();
        assert_eq!(id.get_version_num(), 7);
        assert_eq!(created["org_id"], "secrets");
        assert_eq!(created["name"], "ci deploys");
        assert_eq!(
            created["scopes"],
            json!(["read", "write"]),
            "canonical order"
        );
        assert_eq!(created["principal_type"], "service_account");
        assert_eq!(created["principal_id"], "sa_ci");
        assert_eq!(created["service_account_id"], "sa_ci");
        assert_eq!(created["email"], "ci@example.com");
        assert_eq!(created["user_id"], Value::Null);
        assert_eq!(created["last_used_at"], Value::Null);
        assert_eq!(created["revoked_at"], Value::Null);
        assert_ms_z(&created["created_at"], "created_at");
        assert!(key_works(&server, &secret).await);
        secrets.push(secret);
        ids.push(created["id"].as_str().unwrap().to_owned());
    }
    assert_eq!(secrets.iter().collect::<BTreeSet<_>>().len(), 3);
    // Lists and gets never show a secret, through either API.
    let admin = server.create_key("secrets", &["admin"]).await;
    let list = expect(
        op(
            &server,
            Method::GET,
            "/admin/v1/orgs/secrets/api-keys",
            None,
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_no_secret(&list, "operator list");
    assert_eq!(
        list["pagination"],
        json!({"has_more": false, "next_cursor": null})
    );
    let listed: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["id"].as_str().unwrap())
        .collect();
    assert_eq!(listed.len(), 4);
    assert_eq!(&listed[..3], ids.as_slice(), "oldest first");
    for k in list["data"].as_array().unwrap() {
        assert_eq!(keys_of(k), KEY_FIELDS, "{k}");
    }
    let own = expect(
        server
            .get("/v1/api-keys", &admin.secret)
            .send()
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await;
    assert_no_secret(&own, "org list");
    for id in &ids {
        for (what, resp) in [
            (
                "operator get",
                op(
                    &server,
                    Method::GET,
                    &format!("/admin/v1/orgs/secrets/api-keys/{id}"),
                    None,
                )
                .await,
            ),
            (
                "org get",
                server
                    .get(&format!("/v1/api-keys/{id}"), &admin.secret)
                    .send()
                    .await
                    .unwrap(),
            ),
        ] {
            let got = expect(resp, StatusCode::OK).await;
            assert_no_secret(&got, what);
            assert_eq!(keys_of(&got), KEY_FIELDS, "{what}");
            assert_eq!(got["id"], id.as_str());
        }
    }
    // A full-text look at every answer: no secret anywhere.
    for path in [
        "/admin/v1/orgs",
        "/admin/v1/orgs/secrets",
        "/admin/v1/orgs/secrets/api-keys",
    ] {
        let text = op(&server, Method::GET, path, None)
            .await
            .text()
            .await
            .unwrap();
        for s in &secrets {
            assert!(!text.contains(&s[4..]), "{path} leaks a secret");
        }
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_key_creations_are_refused_by_field() {
    let server = TestServer::start().await;
    let admin = server.org_with_key("keyval").await;
    let ok =
        json!({"name": "n", "scopes": ["read"], "principal_type": "user", "principal_id": "u"});
    let with = |k: &str, v: Value| {
        let mut b = ok.clone();
        b[k] = v;
        b
    };
    let without = |k: &str| {
        let mut b = ok.clone();
        b.as_object_mut().unwrap().remove(k);
        b
    };
    let cases = [
        (without("name"), "name"),
        (with("name", json!("")), "name"),
        (with("name", json!("n".repeat(201))), "name"),
        (without("scopes"), "scopes"),
        (with("scopes", json!([])), "scopes"),
        (with("scopes", json!(["read", "root"])), "scopes"),
        (with("scopes", json!("read")), "scopes"),
        (without("principal_type"), "principal_type"),
        (with("principal_type", json!("robot")), "principal_type"),
        (without("principal_id"), "principal_id"),
        (with("principal_id", json!("")), "principal_id"),
        (with("email", json!("not-an-email")), "email"),
        // Empty strings are not absent fields (SPEC §11).
        (with("email", json!("")), "email"),
        (with("user_id", json!("")), "user_id"),
        (with("service_account_id", json!("")), "service_account_id"),
        (with("colour", json!("red")), "colour"),
        (
            with(
                "secret",
                json!("atk_0000000000000000000000000000000000000000"),
            ),
            "secret",
        ),
        (with("org_id", json!("other")), "org_id"),
    ];
    for (body, param) in &cases {
        for (what, rb) in [
            (
                "operator",
                server
                    .operator(Method::POST, "/admin/v1/orgs/keyval/api-keys")
                    .json(body),
            ),
            (
                "org admin",
                server
                    .request(Method::POST, "/v1/api-keys")
                    .header("x-api-key", &admin.secret)
                    .json(body),
            ),
        ] {
            let resp = rb.send().await.unwrap();
            let (status, _, err) = http_support::split(resp).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{what} {body}: {err}");
            assert_eq!(
                err["error"]["code"], "invalid_request",
                "{what} {body}: {err}"
            );
            assert_eq!(err["error"]["param"], *param, "{what} {body}: {err}");
        }
    }
    // Several problems at once are all named in details.
    let resp = server
        .operator(Method::POST, "/admin/v1/orgs/keyval/api-keys")
        .json(&json!({"scopes": ["root"], "principal_type": "robot"}))
        .send()
        .await
        .unwrap();
    let err = expect_native_error(
        resp,
        StatusCode::BAD_REQUEST,
        "invalid_request",
        Some("name"),
    )
    .await;
    let fields: BTreeSet<&str> = err["error"]["details"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["field"].as_str().unwrap())
        .collect();
    assert_eq!(
        fields,
        BTreeSet::from(["name", "scopes", "principal_type", "principal_id"])
    );
    // A key for an org that does not exist.
    let resp = op(
        &server,
        Method::POST,
        "/admin/v1/orgs/no-such-org/api-keys",
        Some(ok.clone()),
    )
    .await;
    expect_native_error(resp, StatusCode::NOT_FOUND, "not_found", None).await;
    for path in [
        "/admin/v1/orgs/no-such-org/api-keys",
        "/admin/v1/orgs/no-such-org/api-keys/0190f5a2-7b3c-7def-8123-456789abcdef",
    ] {
        let resp = op(&server, Method::GET, path, None).await;
        expect_native_error(resp, StatusCode::NOT_FOUND, "not_found", None).await;
    }
    // Only the org's first key exists: nothing refused was created.
    let list = expect(
        server
            .get("/v1/api-keys", &admin.secret)
            .send()
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await;
    assert_eq!(list["data"].as_array().unwrap().len(), 1);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_is_idempotent_through_both_apis() {
    let server = TestServer::start().await;
    let admin = server.org_with_key("revoke").await;
    for via_operator in [true, false] {
        let key = server.create_key("revoke", &["read"]).await;
        let revoke = || {
            if via_operator {
                server.operator(
                    Method::DELETE,
                    &format!("/admin/v1/orgs/revoke/api-keys/{}", key.id),
                )
            } else {
                server
                    .request(Method::DELETE, &format!("/v1/api-keys/{}", key.id))
                    .header("x-api-key", &admin.secret)
            }
        };
        let first = expect(revoke().send().await.unwrap(), StatusCode::OK).await;
        assert_eq!(keys_of(&first), KEY_FIELDS);
        assert_no_secret(&first, "revoke");
        assert_eq!(first["id"], key.id.as_str());
        assert_ms_z(&first["revoked_at"], "revoked_at");
        assert!(!key_works(&server, &key.secret).await);
        let audits = audit_entries(&server, "revoke").await.len();
        let second = expect(revoke().send().await.unwrap(), StatusCode::OK).await;
        assert_eq!(second, first, "the second DELETE changes nothing");
        assert_eq!(
            audit_entries(&server, "revoke").await.len(),
            audits,
            "revoking a revoked key is not audited again"
        );
        // Lists and gets show the revocation.
        let got = expect(
            server
                .get(&format!("/v1/api-keys/{}", key.id), &admin.secret)
                .send()
                .await
                .unwrap(),
            StatusCode::OK,
        )
        .await;
        assert_eq!(got["revoked_at"], first["revoked_at"]);
        let list = expect(
            op(&server, Method::GET, "/admin/v1/orgs/revoke/api-keys", None).await,
            StatusCode::OK,
        )
        .await;
        let listed = list["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["id"] == key.id.as_str())
            .unwrap();
        assert_eq!(listed["revoked_at"], first["revoked_at"]);
    }
    // Unknown and malformed ids are 404 through both APIs.
    for id in ["0190f5a2-7b3c-7def-8123-456789abcdef", "nope"] {
        let resp = op(
            &server,
            Method::DELETE,
            &format!("/admin/v1/orgs/revoke/api-keys/{id}"),
            None,
        )
        .await;
        expect_native_error(resp, StatusCode::NOT_FOUND, "not_found", None).await;
        let resp = server
            .request(Method::DELETE, &format!("/v1/api-keys/{id}"))
            .header("x-api-key", &admin.secret)
            .send()
            .await
            .unwrap();
        expect_native_error(resp, StatusCode::NOT_FOUND, "not_found", None).await;
    }
    assert!(key_works(&server, &admin.secret).await);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn org_admins_manage_their_own_keys_with_the_same_shapes() {
    let server = TestServer::start().await;
    server.create_org("self-managed").await;
    let admin = server
        .create_key_with(
            "self-managed",
            json!({"name": "root", "scopes": ["admin"], "principal_type": "user",
                   "principal_id": "usr_root", "user_id": "usr_root"}),
        )
        .await;
    let body = json!({"name": "reader", "scopes": ["read"], "principal_type": "user",
                      "principal_id": "usr_r", "user_id": "usr_r", "email": "r@example.com"});
    let (status, _, mine) = send(
        server
            .request(Method::POST, "/v1/api-keys")
            .header("x-api-key", &admin.secret)
            .json(&body),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{mine}");
    let theirs = expect(
        op(
            &server,
            Method::POST,
            "/admin/v1/orgs/self-managed/api-keys",
            Some(body.clone()),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    // Same shape, same values except id, secret and time.
    assert_eq!(keys_of(&mine), keys_of(&theirs));
    for field in KEY_FIELDS {
        if !["id", "created_at"].contains(&field) {
            assert_eq!(mine[field], theirs[field], "{field}");
        }
    }
    assert_eq!(mine["org_id"], "self-managed");
    assert!(is_secret(mine["secret"].as_str().unwrap()));
    let reader = mine["secret"].as_str().unwrap();
    assert!(key_works(&server, reader).await);
    // The reader cannot manage keys; the admin lists, gets and revokes.
    let resp = server.get("/v1/api-keys", reader).send().await.unwrap();
    expect_native_error(resp, StatusCode::FORBIDDEN, "forbidden", None).await;
    let list = expect(
        server
            .get("/v1/api-keys", &admin.secret)
            .send()
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await;
    assert_eq!(keys_of(&list), ["data", "pagination"]);
    let op_list = expect(
        op(
            &server,
            Method::GET,
            "/admin/v1/orgs/self-managed/api-keys",
            None,
        )
        .await,
        StatusCode::OK,
    )
    .await;
    let strip = |v: &Value| -> Vec<Value> {
        v["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| {
                let mut k = k.clone();
                k["last_used_at"] = Value::Null; // moves as the keys are used
                k
            })
            .collect()
    };
    assert_eq!(
        strip(&list),
        strip(&op_list),
        "both APIs list the same keys"
    );
    assert_eq!(list["data"].as_array().unwrap().len(), 3);
    let got = expect(
        server
            .get(
                &format!("/v1/api-keys/{}", mine["id"].as_str().unwrap()),
                &admin.secret,
            )
            .send()
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await;
    let mut created = mine.clone();
    created.as_object_mut().unwrap().remove("secret");
    assert_eq!(got["id"], created["id"]);
    assert_eq!(got["name"], created["name"]);
    assert_eq!(got["created_at"], created["created_at"]);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_used_at_is_recorded_after_use() {
    let server = TestServer::start().await;
    let key = server.org_with_key("used").await;
    let path = format!("/admin/v1/orgs/used/api-keys/{}", key.id);
    let before = expect(op(&server, Method::GET, &path, None).await, StatusCode::OK).await;
    assert_eq!(before["last_used_at"], Value::Null);
    assert!(key_works(&server, &key.secret).await);
    // Recorded asynchronously: poll, bounded.
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let got = expect(op(&server, Method::GET, &path, None).await, StatusCode::OK).await;
        if !got["last_used_at"].is_null() {
            assert_ms_z(&got["last_used_at"], "last_used_at");
            break;
        }
        assert!(Instant::now() < deadline, "last_used_at never set");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.stop().await;
}

/// The audit entry about `resource_id`, `action` (there must be exactly one).
fn entry<'a>(
    entries: &'a [apitrail_model::AuditEntry],
    resource_id: &str,
    action: &str,
) -> &'a apitrail_model::AuditEntry {
    let found: Vec<_> = entries
        .iter()
        .filter(|e| e.resource_id.as_deref() == Some(resource_id) && e.action == action)
        .collect();
    assert_eq!(found.len(), 1, "{action} {resource_id}: {entries:?}");
    found[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_mutation_is_audited_without_secrets() {
    let server = TestServer::start().await;
    // An org created by the operator.
    let resp = server
        .operator(Method::POST, "/admin/v1/orgs")
        .header("x-request-id", "op-create-org")
        .json(&json!({"id": "audited", "name": "Audited Inc"}))
        .send()
        .await
        .unwrap();
    expect(resp, StatusCode::CREATED).await;
    let entries = audit_entries(&server, "audited").await;
    assert_eq!(entries.len(), 1, "{entries:?}");
    let e = entry(&entries, "audited", "create");
    assert_eq!(e.resource_type, "org");
    assert_eq!(e.user_id, None, "the operator has no principal");
    assert_eq!(e.request_id.as_deref(), Some("op-create-org"));
    assert_eq!(e.ip_address.as_deref(), Some("127.0.0.1"));
    let details: Value = serde_json::from_str(e.details.as_deref().unwrap()).unwrap();
    assert_eq!(details["name"], "Audited Inc");

    // A key created by the operator.
    let resp = server
        .operator(Method::POST, "/admin/v1/orgs/audited/api-keys")
        .header("x-request-id", "op-create-key")
        .json(&json!({"name": "admin key", "scopes": ["admin", "read"],
                      "principal_type": "user", "principal_id": "usr_boss",
                      "user_id": "usr_boss_user"}))
        .send()
        .await
        .unwrap();
    let boss = expect(resp, StatusCode::CREATED).await;
    let boss_id = boss["id"].as_str().unwrap();
    let boss_secret = boss["secret"].as_str().unwrap();
    let entries = audit_entries(&server, "audited").await;
    let e = entry(&entries, boss_id, "create");
    assert_eq!(e.resource_type, "api_key");
    assert_eq!(e.user_id, None);
    assert_eq!(e.request_id.as_deref(), Some("op-create-key"));
    let details: Value = serde_json::from_str(e.details.as_deref().unwrap()).unwrap();
    assert_eq!(details["name"], "admin key");
    assert_eq!(details["principal_id"], "usr_boss");

    // A key created, then revoked, by the org admin: the acting key's principal is the user.
    let resp = server
        .request(Method::POST, "/v1/api-keys")
        .header("x-api-key", boss_secret)
        .header("x-request-id", "org-create-key")
        .json(&json!({"name": "worker", "scopes": ["write"],
                      "principal_type": "service_account", "principal_id": "sa_worker"}))
        .send()
        .await
        .unwrap();
    let worker = expect(resp, StatusCode::CREATED).await;
    let worker_id = worker["id"].as_str().unwrap();
    let worker_secret = worker["secret"].as_str().unwrap();
    let resp = server
        .request(Method::DELETE, &format!("/v1/api-keys/{worker_id}"))
        .header("x-api-key", boss_secret)
        .header("x-request-id", "org-revoke-key")
        .send()
        .await
        .unwrap();
    expect(resp, StatusCode::OK).await;
    let entries = audit_entries(&server, "audited").await;
    let c = entry(&entries, worker_id, "create");
    assert_eq!(c.resource_type, "api_key");
    assert_eq!(
        c.user_id.as_deref(),
        Some("usr_boss"),
        "principal_id, not user_id"
    );
    assert_eq!(c.request_id.as_deref(), Some("org-create-key"));
    let r = entry(&entries, worker_id, "revoke");
    assert_eq!(r.resource_type, "api_key");
    assert_eq!(r.user_id.as_deref(), Some("usr_boss"));
    assert_eq!(r.request_id.as_deref(), Some("org-revoke-key"));
    assert!(serde_json::from_str::<Value>(r.details.as_deref().unwrap()).is_ok());

    // A key revoked by the operator.
    let resp = server
        .operator(
            Method::DELETE,
            &format!("/admin/v1/orgs/audited/api-keys/{boss_id}"),
        )
        .send()
        .await
        .unwrap();
    expect(resp, StatusCode::OK).await;
    let entries = audit_entries(&server, "audited").await;
    let r = entry(&entries, boss_id, "revoke");
    assert_eq!(r.resource_type, "api_key");
    assert_eq!(r.user_id, None);

    // Exactly these five entries, newest first, none holding a secret; reads and refused
    // calls added none.
    let reads = [
        "/admin/v1/orgs",
        "/admin/v1/orgs/audited",
        "/admin/v1/orgs/audited/api-keys",
    ];
    for path in reads {
        expect(op(&server, Method::GET, path, None).await, StatusCode::OK).await;
    }
    let entries = audit_entries(&server, "audited").await;
    let summary: Vec<(String, String)> = entries
        .iter()
        .map(|e| (e.resource_type.clone(), e.action.clone()))
        .collect();
    assert_eq!(
        summary,
        [
            ("api_key".to_owned(), "revoke".to_owned()),
            ("api_key".to_owned(), "revoke".to_owned()),
            ("api_key".to_owned(), "create".to_owned()),
            ("api_key".to_owned(), "create".to_owned()),
            ("org".to_owned(), "create".to_owned()),
        ]
    );
    for e in &entries {
        let details = e.details.as_deref().unwrap_or("");
        assert!(serde_json::from_str::<Value>(details).is_ok(), "{details}");
        for s in [boss_secret, worker_secret] {
            assert!(!details.contains(&s[4..]), "a secret in {details}");
        }
        assert!(!details.contains("atk_"), "{details}");
        assert!(!details.contains("secret"), "{details}");
        assert!(e.created_at.millis() > 0);
    }
    server.stop().await;
}

/// A JSON body beyond the 2 MiB the routes take is refused with 413 in the native envelope,
/// as the document says, not with a plain-text answer from the framework.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_are_413_in_the_envelope() {
    let server = TestServer::start().await;
    let key = server.org_with_key("big").await;
    let big = json!({"name": "x".repeat(3 * 1024 * 1024)}).to_string();
    let resp = server
        .operator(Method::POST, "/admin/v1/orgs")
        .header("content-type", "application/json")
        .body(big.clone())
        .send()
        .await
        .unwrap();
    expect_native_error(
        resp,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        None,
    )
    .await;
    let resp = server
        .request(Method::POST, "/v1/api-keys")
        .header("x-api-key", &key.secret)
        .header("content-type", "application/json")
        .body(big)
        .send()
        .await
        .unwrap();
    expect_native_error(
        resp,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        None,
    )
    .await;
    server.stop().await;
}

/// A path segment that is not UTF-8 (`%FF`) names no org, key, destination or definition: a
/// 404 in the route's envelope like any other unknown id, not the framework's plain-text 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_path_segments_name_nothing() {
    let server = TestServer::start().await;
    let key = server.org_with_key("7").await;
    for path in [
        "/admin/v1/orgs/%FF",
        "/admin/v1/orgs/%FF/api-keys",
        "/admin/v1/orgs/7/api-keys/%FF",
    ] {
        let resp = server.operator(Method::GET, path).send().await.unwrap();
        expect_native_error(resp, StatusCode::NOT_FOUND, "not_found", None).await;
    }
    for (method, path) in [
        (Method::GET, "/v1/api-keys/%FF"),
        (Method::GET, "/v1/destinations/%FF"),
        (Method::DELETE, "/v1/action-definitions/%FF"),
        (Method::POST, "/v1/orgs/%FF/actions"),
        (Method::POST, "/v1/orgs/7/actions/records/%FF/signal"),
    ] {
        let resp = server
            .request(method.clone(), path)
            .header("x-api-key", &key.secret)
            .header("content-type", "application/json")
            .body(r#"{"status": "succeeded"}"#)
            .send()
            .await
            .unwrap();
        expect_native_error(resp, StatusCode::NOT_FOUND, "not_found", None).await;
    }
    let resp = server
        .request(Method::GET, "/v1/orgs/%FF/actions/records")
        .header("x-api-key", &key.secret)
        .send()
        .await
        .unwrap();
    let body = expect(resp, StatusCode::NOT_FOUND).await;
    assert_eq!(body["errors"][0]["code"], "not_found", "{body}");
    server.stop().await;
}

//! The actions dialect over HTTP (seed 002, SPEC §3.3): `GET /v1/orgs/{org_id}/actions/records`
//! against the real router on a random port — item and envelope shape (with a snapshot), every
//! parameter with its default and bounds, offset walks against a reference model, and org
//! isolation.
//!
//! The records are made through the native routes (`POST /v1/orgs/{org}/actions` over three
//! definitions, two of them with several versions), some moved on to `acknowledged` behind the
//! API (as the dispatcher would; the test server runs none) and then signaled. Expectations
//! come from the reference model in this file, built from what the create and signal calls
//! answered: filter with the semantics of `ActionFilter::matches`, written again here, then
//! order by `created_at` and `id`, both descending. Never from the list's own answers.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::reference;

use std::collections::{BTreeMap, BTreeSet};

use apitrail_testkit::{TestKey, TestServer, assert_snapshot, expect, header};
use reference::{Rng, is_utc_millis};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use uuid::Uuid;

const CRATE: &str = env!("CARGO_MANIFEST_DIR");

/// A public address, so destinations pass the SSRF check; the test server runs no
/// dispatcher, so nothing is ever sent there.
const PUBLIC: &str = "93.184.216.34";

/// The fields of an item (seed 002), without the optional `state` and `definition`.
const ITEM_KEYS: [&str; 7] = [
    "action_definition_id",
    "events",
    "id",
    "input",
    "org_id",
    "tags",
    "timeout",
];
const STATE_KEYS: [&str; 8] = [
    "attempt",
    "available_at",
    "completed_at",
    "error_message",
    "started_at",
    "status",
    "timeout_at",
    "updated_at",
];
const DEFINITION_KEYS: [&str; 8] = [
    "alias",
    "deleted_at",
    "destinations",
    "id",
    "org_id",
    "schema",
    "variant",
    "version",
];
const LINK_KEYS: [&str; 6] = [
    "action_definition_id",
    "destination",
    "destination_id",
    "id",
    "is_default",
    "org_id",
];
const DESTINATION_KEYS: [&str; 9] = [
    "config",
    "credential_id",
    "deleted_at",
    "id",
    "label",
    "org_id",
    "tags",
    "type",
    "updated_at",
];
const CONFIG_KEYS: [&str; 4] = ["headers", "response_time_sla_ms", "signaling", "url"];
const SIGNALING_KEYS: [&str; 2] = ["default", "enabled"];
const EVENT_KEYS: [&str; 10] = [
    "action_record_id",
    "attempt",
    "available_at",
    "data",
    "id",
    "kind",
    "message",
    "org_id",
    "status",
    "timeout_at",
];

/// Values redacted in snapshots: random ids and clock readings.
const VOLATILE: [&str; 11] = [
    "id",
    "action_definition_id",
    "action_record_id",
    "destination_id",
    "credential_id",
    "updated_at",
    "available_at",
    "timeout_at",
    "started_at",
    "completed_at",
    "deleted_at",
];

// ---------------------------------------------------------------------------------------------
// HTTP helpers.
// ---------------------------------------------------------------------------------------------

fn keys(v: &Value) -> Vec<&str> {
    let mut k: Vec<&str> = v
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"))
        .keys()
        .map(String::as_str)
        .collect();
    k.sort_unstable();
    k
}

fn records_url(org: &str, query: &str) -> String {
    if query.is_empty() {
        format!("/v1/orgs/{org}/actions/records")
    } else {
        format!("/v1/orgs/{org}/actions/records?{query}")
    }
}

/// `application/x-www-form-urlencoded` of `pairs`.
fn encode<K: AsRef<str>, V: AsRef<str>>(pairs: &[(K, V)]) -> String {
    let mut s = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        s.append_pair(k.as_ref(), v.as_ref());
    }
    s.finish()
}

/// A native call with `secret`, a JSON body given as text, expecting `status`.
async fn call(
    server: &TestServer,
    secret: &str,
    method: Method,
    path: &str,
    body: Option<String>,
    status: StatusCode,
) -> Value {
    let mut rb = server.request(method, path).header("x-api-key", secret);
    if let Some(b) = body {
        rb = rb.header("content-type", "application/json").body(b);
    }
    expect(rb.send().await.unwrap(), status).await
}

async fn post(server: &TestServer, secret: &str, path: &str, body: &Value) -> Value {
    call(
        server,
        secret,
        Method::POST,
        path,
        Some(body.to_string()),
        StatusCode::CREATED,
    )
    .await
}

/// A list call with the seed's own auth header; checks the success envelope.
async fn list(server: &TestServer, secret: &str, org: &str, query: &str) -> Value {
    let resp = server
        .request(Method::GET, &records_url(org, query))
        .header("x-arklow-auth", secret)
        .send()
        .await
        .unwrap();
    assert!(header(&resp, "x-request-id").is_some());
    let body = expect(resp, StatusCode::OK).await;
    assert_eq!(keys(&body), ["data", "errors"], "{query}: {body}");
    assert!(body["errors"].is_null(), "{query}: {body}");
    assert_eq!(keys(&body["data"]), ["count", "items"], "{query}: {body}");
    assert!(body["data"]["items"].is_array(), "{query}: {body}");
    assert!(body["data"]["count"].is_u64(), "{query}: {body}");
    body
}

/// Checks the actions error envelope `{"data": null, "errors": [{"code", "message"}]}`; the
/// message must mention `mention`.
fn check_error(body: &Value, code: &str, mention: &str) {
    assert_eq!(keys(body), ["data", "errors"], "{body}");
    assert!(body["data"].is_null(), "{body}");
    let errors = body["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 1, "{body}");
    assert_eq!(keys(&errors[0]), ["code", "message"], "{body}");
    assert_eq!(errors[0]["code"], code, "{body}");
    let message = errors[0]["message"].as_str().unwrap();
    assert!(
        !message.is_empty() && message.contains(mention),
        "the message should mention {mention:?}: {body}"
    );
}

/// A list call expected to fail with `status` in the actions envelope.
async fn list_error(
    server: &TestServer,
    secret: Option<&str>,
    org: &str,
    query: &str,
    status: StatusCode,
    code: &str,
    mention: &str,
) -> Value {
    let mut rb = server.request(Method::GET, &records_url(org, query));
    if let Some(s) = secret {
        rb = rb.header("x-arklow-auth", s);
    }
    let resp = rb.send().await.unwrap();
    assert!(header(&resp, "x-request-id").is_some(), "{query}");
    let body = expect(resp, status).await;
    check_error(&body, code, mention);
    body
}

// ---------------------------------------------------------------------------------------------
// The reference model.
// ---------------------------------------------------------------------------------------------

/// A definition as the test made it.
#[derive(Debug, Clone)]
struct Def {
    id: String,
    variant: String,
    alias: Vec<String>,
    /// The schema of version `n` at `n - 1`.
    schemas: Vec<Value>,
    /// Its destinations' ids, in order.
    destinations: Vec<String>,
}

/// A record as the create (and signal) calls answered.
#[derive(Debug, Clone)]
struct Rec {
    id: String,
    definition_id: String,
    variant: String,
    version: u32,
    input: Value,
    timeout: u64,
    tags: BTreeMap<String, String>,
    status: String,
    /// The kinds of its events, oldest first.
    events: Vec<&'static str>,
    created_at: String,
}

/// One list query: the dialect's filters and search, in either spelling.
#[derive(Debug, Clone, Default)]
struct Query {
    definition_id: Option<String>,
    variant: Option<String>,
    version: Option<u32>,
    search: Option<(String, String)>,
    /// `field`/`value`/`op` instead of `search[field]`/...
    plain: bool,
    /// Also send `op=eq`.
    op: bool,
}

impl Query {
    fn search(field: &str, value: &str) -> Self {
        Self {
            search: Some((field.to_owned(), value.to_owned())),
            ..Self::default()
        }
    }

    fn pairs(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        if let Some(d) = &self.definition_id {
            out.push(("action_definition_id".to_owned(), d.clone()));
        }
        if let Some(v) = &self.variant {
            out.push(("variant".to_owned(), v.clone()));
        }
        if let Some(v) = self.version {
            out.push(("version".to_owned(), v.to_string()));
        }
        if let Some((field, value)) = &self.search {
            let name = |n: &str| {
                if self.plain {
                    n.to_owned()
                } else {
                    format!("search[{n}]")
                }
            };
            out.push((name("field"), field.clone()));
            out.push((name("value"), value.clone()));
            if self.op {
                out.push((name("op"), "eq".to_owned()));
            }
        }
        out
    }

    /// The semantics of `ActionFilter::matches`, written independently.
    fn matches(&self, r: &Rec) -> bool {
        let same_uuid = |value: &str, id: &str| {
            Uuid::try_parse(value).ok() == Some(Uuid::parse_str(id).unwrap())
        };
        if let Some(d) = &self.definition_id
            && !same_uuid(d, &r.definition_id)
        {
            return false;
        }
        if self.variant.as_ref().is_some_and(|v| *v != r.variant) {
            return false;
        }
        if self.version.is_some_and(|v| v != r.version) {
            return false;
        }
        let Some((field, value)) = &self.search else {
            return true;
        };
        match field.as_str() {
            "id" => same_uuid(value, &r.id),
            "action_definition_id" => same_uuid(value, &r.definition_id),
            "variant" => r.variant == *value,
            "state.status" => r.status == *value,
            f => {
                if let Some(key) = f.strip_prefix("tags.") {
                    return r.tags.get(key) == Some(value);
                }
                let path = f.strip_prefix("input.").expect("a known field");
                let mut at = &r.input;
                for key in path.split('.') {
                    match at.as_object().and_then(|o| o.get(key)) {
                        Some(v) => at = v,
                        None => return false,
                    }
                }
                match at {
                    Value::String(s) => s == value,
                    Value::Number(n) => value
                        .parse::<f64>()
                        .ok()
                        .filter(|f| f.is_finite())
                        .is_some_and(|f| n.as_f64() == Some(f)),
                    Value::Bool(b) => *value == b.to_string(),
                    _ => false,
                }
            }
        }
    }
}

/// The matching records, newest first (`created_at`, then `id`, both descending).
fn model<'a>(recs: &'a [Rec], q: &Query) -> Vec<&'a Rec> {
    let mut out: Vec<&Rec> = recs.iter().filter(|r| q.matches(r)).collect();
    out.sort_by(|a, b| (&b.created_at, &b.id).cmp(&(&a.created_at, &a.id)));
    out
}

// ---------------------------------------------------------------------------------------------
// Fixtures.
// ---------------------------------------------------------------------------------------------

/// What the list must print for a record: every field, checked against the model.
#[derive(Debug, Clone, Copy, Default)]
struct Include {
    state: bool,
    definition: bool,
}

fn check_time(v: &Value, what: &str) {
    assert!(
        v.as_str().is_some_and(is_utc_millis),
        "{what} is not RFC 3339 UTC with milliseconds: {v}"
    );
}

fn check_time_or_null(v: &Value, what: &str) {
    if !v.is_null() {
        check_time(v, what);
    }
}

fn check_item(item: &Value, rec: &Rec, defs: &[Def], org: &str, include: Include) {
    let mut want: Vec<&str> = ITEM_KEYS.to_vec();
    if include.state {
        want.push("state");
    }
    if include.definition {
        want.push("definition");
    }
    want.sort_unstable();
    assert_eq!(keys(item), want, "{item}");
    assert_eq!(item["id"], rec.id.as_str());
    assert_eq!(item["org_id"], org);
    assert_eq!(item["action_definition_id"], rec.definition_id.as_str());
    assert_eq!(item["input"], rec.input, "{item}");
    assert_eq!(item["timeout"], rec.timeout);
    assert_eq!(item["tags"], json!(rec.tags));
    let events = item["events"].as_array().unwrap();
    let kinds: Vec<&str> = events.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, rec.events, "{item}");
    for e in events {
        assert_eq!(keys(e), EVENT_KEYS, "{e}");
        assert_eq!(e["action_record_id"], rec.id.as_str());
        assert_eq!(e["org_id"], org);
        assert!(e["attempt"].is_u64(), "{e}");
        check_time_or_null(&e["available_at"], "available_at");
        check_time_or_null(&e["timeout_at"], "timeout_at");
    }
    assert_eq!(events[0]["status"], "pending");
    assert_eq!(events[0]["attempt"], 0);
    check_time(&events[0]["available_at"], "available_at");
    assert_eq!(events.last().unwrap()["status"], rec.status.as_str());
    if include.state {
        let s = &item["state"];
        assert_eq!(keys(s), STATE_KEYS, "{s}");
        assert_eq!(s["status"], rec.status.as_str());
        assert_eq!(s["attempt"], u64::from(rec.status != "pending"));
        for k in ["updated_at", "available_at"] {
            check_time(&s[k], k);
        }
        for k in ["timeout_at", "started_at", "completed_at"] {
            check_time_or_null(&s[k], k);
        }
        assert_eq!(
            s["completed_at"].is_null(),
            matches!(rec.status.as_str(), "pending" | "acknowledged"),
            "{s}"
        );
        assert_eq!(s["error_message"].is_null(), rec.status != "failed", "{s}");
    }
    if include.definition {
        let d = &item["definition"];
        let def = defs.iter().find(|d| d.id == rec.definition_id).unwrap();
        assert_eq!(keys(d), DEFINITION_KEYS, "{d}");
        assert_eq!(d["id"], def.id.as_str());
        assert_eq!(d["org_id"], org);
        assert_eq!(d["variant"], def.variant.as_str());
        assert_eq!(d["version"], rec.version, "{d}");
        assert_eq!(d["alias"], json!(def.alias));
        assert_eq!(d["schema"], def.schemas[rec.version as usize - 1], "{d}");
        assert!(d["deleted_at"].is_null());
        let links: Vec<&str> = d["destinations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| {
                assert_eq!(keys(l), LINK_KEYS, "{l}");
                assert_eq!(l["action_definition_id"], def.id.as_str());
                assert_eq!(l["org_id"], org);
                assert_eq!(l["destination"]["id"], l["destination_id"]);
                assert_eq!(keys(&l["destination"]), DESTINATION_KEYS);
                l["destination_id"].as_str().unwrap()
            })
            .collect();
        assert_eq!(links, def.destinations, "{d}");
    }
}

/// Creates a destination at the public address and returns its id.
async fn destination(server: &TestServer, secret: &str, label: &str, body: Value) -> String {
    let mut b = json!({
        "label": label,
        "type": "webhook",
        "config": {"url": format!("https://{PUBLIC}/hooks/{label}")},
    });
    for (k, v) in body.as_object().unwrap() {
        b[k] = v.clone();
    }
    post(server, secret, "/v1/destinations", &b).await["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Creates a definition and returns it as the model knows it.
async fn definition(
    server: &TestServer,
    secret: &str,
    variant: &str,
    alias: &[&str],
    schema: Value,
    destinations: &[&str],
) -> Def {
    let links: Vec<Value> = destinations
        .iter()
        .enumerate()
        .map(|(i, d)| json!({"destination_id": d, "is_default": i == 0}))
        .collect();
    let body = json!({"variant": variant, "alias": alias, "schema": schema, "destinations": links});
    let v = post(server, secret, "/v1/action-definitions", &body).await;
    assert_eq!(v["version"], 1);
    Def {
        id: v["id"].as_str().unwrap().to_owned(),
        variant: variant.to_owned(),
        alias: alias.iter().map(|a| (*a).to_owned()).collect(),
        schemas: vec![schema],
        destinations: destinations.iter().map(|d| (*d).to_owned()).collect(),
    }
}

/// Replaces `def`'s schema (same names and destinations): the next version.
async fn new_version(server: &TestServer, secret: &str, def: &mut Def, schema: Value) {
    let links: Vec<Value> = def
        .destinations
        .iter()
        .enumerate()
        .map(|(i, d)| json!({"destination_id": d, "is_default": i == 0}))
        .collect();
    let body = json!({"variant": def.variant, "alias": def.alias, "schema": schema,
                      "destinations": links});
    let v = call(
        server,
        secret,
        Method::PUT,
        &format!("/v1/action-definitions/{}", def.id),
        Some(body.to_string()),
        StatusCode::OK,
    )
    .await;
    def.schemas.push(schema);
    assert_eq!(v["version"], def.schemas.len(), "{v}");
}

/// Triggers `action` with the input given as JSON text (kept as sent) and `extra` fields.
async fn trigger(
    server: &TestServer,
    key: &TestKey,
    action: &str,
    input: &str,
    extra: Value,
) -> Rec {
    let mut body = extra.as_object().cloned().unwrap_or_default();
    body.insert("action".into(), json!(action));
    body.insert("input".into(), json!("__INPUT__"));
    let text = Value::Object(body)
        .to_string()
        .replace("\"__INPUT__\"", input);
    let v = call(
        server,
        &key.secret,
        Method::POST,
        &format!("/v1/orgs/{}/actions", key.org_id),
        Some(text),
        StatusCode::CREATED,
    )
    .await;
    let sent: Value = serde_json::from_str(input).unwrap();
    assert_eq!(v["input"], sent, "{v}");
    assert_eq!(v["state"]["status"], "pending");
    let tags: BTreeMap<String, String> = extra
        .get("tags")
        .map(|t| serde_json::from_value(t.clone()).unwrap())
        .unwrap_or_default();
    assert_eq!(v["tags"], json!(tags));
    Rec {
        id: v["id"].as_str().unwrap().to_owned(),
        definition_id: v["action_definition_id"].as_str().unwrap().to_owned(),
        variant: v["variant"].as_str().unwrap().to_owned(),
        version: u32::try_from(v["version"].as_u64().unwrap()).unwrap(),
        input: sent,
        timeout: v["timeout"].as_u64().unwrap(),
        tags,
        status: "pending".to_owned(),
        events: vec!["created"],
        created_at: v["created_at"].as_str().unwrap().to_owned(),
    }
}

/// Moves a pending record to `acknowledged` behind the API (see
/// `TestServer::acknowledge_action`) and notes it in the model.
async fn acknowledge(server: &TestServer, org: &str, rec: &mut Rec) {
    server.acknowledge_action(org, &rec.id).await;
    rec.status = "acknowledged".into();
    rec.events.push("acknowledged");
}

/// Signals an acknowledged record's outcome through the API.
async fn signal(server: &TestServer, key: &TestKey, rec: &mut Rec, status: &str) {
    let body = json!({"status": status, "message": format!("{status} by test"),
                      "data": {"receipt": rec.id}});
    let v = call(
        server,
        &key.secret,
        Method::POST,
        &format!("/v1/orgs/{}/actions/records/{}/signal", key.org_id, rec.id),
        Some(body.to_string()),
        StatusCode::OK,
    )
    .await;
    assert_eq!(v["state"]["status"], status, "{v}");
    rec.status = status.to_owned();
    rec.events.push("signaled");
}

/// Numbers as sent, in several spellings of the same values.
const AMOUNTS: [&str; 9] = [
    "1",
    "1.5",
    "1.50",
    "2",
    "10",
    "1e1",
    "10.0",
    "0.1",
    "9007199254740993",
];
const LABELS: [&str; 4] = ["1.5", "true", "a", "A"];
/// Inputs of the schema-less definition: any JSON, odd keys included.
const FREE_INPUTS: [&str; 10] = [
    r#"{"arr":[1,2,3]}"#,
    r#""just text""#,
    "42",
    "[1,2]",
    r#"{"flag":true,"nested":{"level":"a"}}"#,
    r#"{"a b":{"c":"d"}}"#,
    r#"{"amount":"1.5"}"#,
    "{}",
    r#"{"label":1.5,"ключ":"значение"}"#,
    r#"{"x[0]":"bracket","$":"dollar"}"#,
];

fn nested(rng: &mut Rng) -> String {
    format!(
        r#"{{"level":"{}","n":{},"deep":{{"k":"{}"}}}}"#,
        rng.pick(&["a", "b"]),
        rng.pick(&["1", "1.5", "2"]),
        rng.pick(&["v", "w"])
    )
}

fn email_input(rng: &mut Rng) -> String {
    let mut parts = vec![
        format!(r#""to":"user{}@example.com""#, rng.below(12)),
        format!(r#""flag":{}"#, rng.chance(50)),
    ];
    if rng.chance(60) {
        parts.push(format!(r#""amount":{}"#, rng.pick(&AMOUNTS)));
    }
    if rng.chance(50) {
        parts.push(format!(r#""label":"{}""#, rng.pick(&LABELS)));
    }
    if rng.chance(60) {
        parts.push(format!(r#""nested":{}"#, nested(rng)));
    }
    format!("{{{}}}", parts.join(","))
}

fn charge_input(rng: &mut Rng) -> String {
    let mut parts = vec![
        format!(r#""amount":{}"#, rng.pick(&AMOUNTS)),
        format!(r#""currency":"{}""#, rng.pick(&["usd", "eur"])),
    ];
    if rng.chance(40) {
        parts.push(format!(r#""nested":{}"#, nested(rng)));
    }
    if rng.chance(30) {
        parts.push(format!(r#""flag":{}"#, rng.chance(50)));
    }
    format!("{{{}}}", parts.join(","))
}

fn random_tags(rng: &mut Rng) -> BTreeMap<String, String> {
    let mut t = BTreeMap::new();
    if rng.chance(70) {
        t.insert("team".into(), rng.pick(&["a", "b", "c"]).into());
    }
    if rng.chance(50) {
        t.insert("env".into(), rng.pick(&["prod", "staging"]).into());
    }
    if rng.chance(20) {
        t.insert("n".into(), "1.5".into());
    }
    if rng.chance(10) {
        t.insert("a.b".into(), "dotted".into());
    }
    t
}

#[derive(Debug)]
struct Fixture {
    server: TestServer,
    key: TestKey,
    defs: Vec<Def>,
    recs: Vec<Rec>,
}

/// Three definitions (send_email in versions 1-3, charge_card in 1-2, noop), about 120
/// records in three phases between the versions, some acknowledged and signaled.
async fn walk_fixture(org: &str, seed: u64) -> Fixture {
    let server = TestServer::start().await;
    let key = server.org_with_key(org).await;
    let s = key.secret.clone();
    let mut rng = Rng(seed);
    let cred = post(&server, &s, "/v1/credentials", &json!({"label": "signing"})).await;
    let d1 = destination(
        &server,
        &s,
        "primary",
        json!({"credential_id": cred["id"], "tags": {"env": "prod"},
               "config": {"url": format!("https://{PUBLIC}/hooks/primary"),
                          "headers": {"X-Team": "a"},
                          "signaling": {"enabled": true, "default": "ack"},
                          "response_time_sla_ms": 5000}}),
    )
    .await;
    let d2 = destination(&server, &s, "backup", json!({})).await;
    let email_v1 = json!({"type": "object", "required": ["to"],
                          "properties": {"to": {"type": "string"}}});
    let email_v2 = json!({"type": "object", "required": ["to"],
                          "properties": {"to": {"type": "string"}, "cc": {"type": "string"}}});
    let email_v3 = json!({"type": "object", "required": ["to", "flag"],
                          "properties": {"to": {"type": "string"}, "flag": {"type": "boolean"}}});
    let charge_v1 = json!({"type": "object", "required": ["amount"],
                           "properties": {"amount": {"type": "number"}}});
    let charge_v2 = json!({"type": "object", "required": ["amount", "currency"],
                           "properties": {"amount": {"type": "number", "minimum": 0},
                                          "currency": {"enum": ["usd", "eur"]}}});
    let mut email = definition(
        &server,
        &s,
        "send_email",
        &["email", "mail.send"],
        email_v1,
        &[&d1, &d2],
    )
    .await;
    let mut charge = definition(&server, &s, "charge_card", &["charge"], charge_v1, &[&d2]).await;
    let noop = definition(&server, &s, "noop", &[], json!({}), &[&d1]).await;

    let mut recs = Vec::new();
    for phase in 0..3 {
        if phase == 1 {
            new_version(&server, &s, &mut email, email_v2.clone()).await;
            new_version(&server, &s, &mut charge, charge_v2.clone()).await;
        }
        if phase == 2 {
            new_version(&server, &s, &mut email, email_v3.clone()).await;
        }
        for _ in 0..40 {
            let (def, input) = match rng.below(3) {
                0 => (&email, email_input(&mut rng)),
                1 => (&charge, charge_input(&mut rng)),
                _ => (&noop, rng.pick(&FREE_INPUTS).to_owned()),
            };
            let mut names: Vec<&str> = vec![def.variant.as_str(), def.id.as_str()];
            names.extend(def.alias.iter().map(String::as_str));
            let action = rng.pick(&names).to_owned();
            let mut extra = json!({});
            let tags = random_tags(&mut rng);
            if !tags.is_empty() || rng.chance(50) {
                extra["tags"] = json!(tags);
            }
            if rng.chance(60) {
                extra["timeout"] = json!(1 + rng.below(600));
            }
            if rng.chance(20) {
                extra["destination_id"] = json!(d2);
            }
            // Older versions stay triggerable by number.
            if def.schemas.len() > 1 && rng.chance(25) {
                extra["version"] = json!(1 + rng.below(def.schemas.len() as u64));
            }
            let rec = trigger(&server, &key, &action, &input, extra.clone()).await;
            assert_eq!(rec.definition_id, def.id);
            assert_eq!(rec.variant, def.variant);
            let want_version = extra["version"]
                .as_u64()
                .unwrap_or(def.schemas.len() as u64);
            assert_eq!(u64::from(rec.version), want_version);
            assert_eq!(rec.timeout, extra["timeout"].as_u64().unwrap_or(300));
            recs.push(rec);
        }
    }
    // Varied states: some acknowledged, then some of those signaled.
    for rec in &mut recs {
        if rng.chance(25) {
            acknowledge(&server, org, rec).await;
            match rng.below(3) {
                0 => signal(&server, &key, rec, "succeeded").await,
                1 => signal(&server, &key, rec, "failed").await,
                _ => {}
            }
        }
    }
    Fixture {
        server,
        key,
        defs: vec![email, charge, noop],
        recs,
    }
}

// ---------------------------------------------------------------------------------------------
// Walks.
// ---------------------------------------------------------------------------------------------

fn ids(items: &[Value]) -> Vec<&str> {
    items.iter().map(|i| i["id"].as_str().unwrap()).collect()
}

/// Walks every page of `q` with `take` (`None`: the default, 20) from `first_skip` on, one
/// page past the end included, comparing each with the model.
async fn walk(f: &Fixture, q: &Query, take: Option<u32>, first_skip: usize, include: Include) {
    let org = f.key.org_id.as_str();
    let want = model(&f.recs, q);
    let total = want.len();
    let size = take.unwrap_or(20) as usize;
    let mut skip = first_skip;
    let mut pages = 0;
    loop {
        let mut pairs = q.pairs();
        if let Some(t) = take {
            pairs.push(("take".into(), t.to_string()));
        }
        if skip > 0 {
            pairs.push(("skip".into(), skip.to_string()));
        }
        if include.state {
            pairs.push(("include_state".into(), "true".into()));
        }
        if include.definition {
            pairs.push(("include_definition".into(), "true".into()));
        }
        let query = encode(&pairs);
        let page = list(&f.server, &f.key.secret, org, &query).await;
        assert_eq!(page["data"]["count"], total, "{query}");
        let items = page["data"]["items"].as_array().unwrap();
        let expected = &want[skip.min(total)..(skip + size).min(total)];
        let want_ids: Vec<&str> = expected.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids(items), want_ids, "{query}");
        for (item, rec) in items.iter().zip(expected) {
            check_item(item, rec, &f.defs, org, include);
        }
        pages += 1;
        assert!(pages < 1000, "the walk does not end");
        if skip >= total {
            break;
        }
        skip += size;
    }
    // count_only: the same count, no items, whatever the page.
    for extra in ["", "&skip=3&take=2"] {
        let query = format!("{}&count_only=true{extra}", encode(&q.pairs()));
        let page = list(&f.server, &f.key.secret, org, &query).await;
        assert_eq!(page["data"]["count"], total, "{query}");
        assert_eq!(page["data"]["items"], json!([]), "{query}");
    }
}

/// The queries walked: every filter, every searchable field, values in several spellings,
/// and combinations.
fn queries(f: &Fixture) -> Vec<Query> {
    let (email, charge, noop) = (&f.defs[0], &f.defs[1], &f.defs[2]);
    let some = &f.recs[f.recs.len() / 2];
    let to = f
        .recs
        .iter()
        .find_map(|r| r.input.get("to").and_then(Value::as_str))
        .unwrap()
        .to_owned();
    let mut qs = vec![Query::default()];
    for d in [email, charge, noop] {
        qs.push(Query {
            variant: Some(d.variant.clone()),
            ..Query::default()
        });
        qs.push(Query {
            definition_id: Some(d.id.clone()),
            ..Query::default()
        });
    }
    for v in 1..=4 {
        qs.push(Query {
            version: Some(v),
            ..Query::default()
        });
    }
    qs.extend([
        Query {
            variant: Some("email".into()), // an alias is not a variant
            ..Query::default()
        },
        Query {
            definition_id: Some("not-a-uuid".into()),
            ..Query::default()
        },
        Query {
            definition_id: Some(email.id.to_uppercase()),
            ..Query::default()
        },
        Query {
            variant: Some(email.variant.clone()),
            version: Some(2),
            ..Query::default()
        },
        Query {
            definition_id: Some(email.id.clone()),
            version: Some(1),
            ..Query::default()
        },
        Query {
            definition_id: Some(charge.id.clone()),
            variant: Some(email.variant.clone()),
            ..Query::default()
        },
    ]);
    let searches: Vec<(&str, String)> = vec![
        ("id", some.id.clone()),
        ("id", some.id.to_uppercase()),
        ("id", Uuid::now_v7().to_string()),
        ("id", "nope".into()),
        ("action_definition_id", charge.id.clone()),
        ("action_definition_id", "nope".into()),
        ("variant", noop.variant.clone()),
        ("variant", "mail.send".into()),
        ("state.status", "pending".into()),
        ("state.status", "acknowledged".into()),
        ("state.status", "succeeded".into()),
        ("state.status", "failed".into()),
        ("state.status", "timed_out".into()),
        ("state.status", "PENDING".into()),
        ("tags.team", "a".into()),
        ("tags.team", "b".into()),
        ("tags.env", "prod".into()),
        ("tags.n", "1.5".into()),
        ("tags.n", "1.50".into()),
        ("tags.a.b", "dotted".into()),
        ("tags.missing", "x".into()),
        ("input.to", to),
        ("input.amount", "1.5".into()),
        ("input.amount", "1.50".into()),
        ("input.amount", "10".into()),
        ("input.amount", "1e1".into()),
        ("input.amount", "0.1".into()),
        ("input.amount", "9007199254740993".into()),
        ("input.amount", "abc".into()),
        ("input.flag", "true".into()),
        ("input.flag", "false".into()),
        ("input.flag", "1".into()),
        ("input.label", "1.5".into()),
        ("input.label", "true".into()),
        ("input.label", "A".into()),
        ("input.nested.level", "a".into()),
        ("input.nested.n", "1.5".into()),
        ("input.nested.n", "1".into()),
        ("input.nested.deep.k", "v".into()),
        ("input.nested", "a".into()),
        ("input.nested.deep.k.x", "v".into()),
        ("input.currency", "eur".into()),
        ("input.a b.c", "d".into()),
        ("input.ключ", "значение".into()),
        ("input.x[0]", "bracket".into()),
        ("input.$", "dollar".into()),
        ("input.arr", "1".into()),
        ("input.missing", "x".into()),
    ];
    for (i, (field, value)) in searches.into_iter().enumerate() {
        qs.push(Query {
            plain: i % 2 == 1,
            op: i % 3 == 0,
            ..Query::search(field, &value)
        });
    }
    qs.extend([
        Query {
            variant: Some(email.variant.clone()),
            ..Query::search("tags.team", "b")
        },
        Query {
            version: Some(2),
            plain: true,
            ..Query::search("input.flag", "true")
        },
        Query {
            definition_id: Some(charge.id.clone()),
            op: true,
            ..Query::search("state.status", "pending")
        },
        Query {
            variant: Some(noop.variant.clone()),
            ..Query::search("variant", email.variant.as_str())
        },
    ]);
    qs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offset_walks_match_the_reference_model() {
    let f = walk_fixture("4242", 0xAC71_0001).await;
    // The fixture is varied enough for the walks to mean something.
    let statuses: BTreeSet<&str> = f.recs.iter().map(|r| r.status.as_str()).collect();
    assert_eq!(
        statuses,
        BTreeSet::from(["acknowledged", "failed", "pending", "succeeded"])
    );
    let versions: BTreeSet<(String, u32)> = f
        .recs
        .iter()
        .map(|r| (r.variant.clone(), r.version))
        .collect();
    assert_eq!(versions.len(), 6, "{versions:?}");
    let qs = queries(&f);
    let mut nonempty = 0;
    for (i, q) in qs.iter().enumerate() {
        let total = model(&f.recs, q).len();
        nonempty += usize::from(total > 0);
        let include = Include {
            state: i % 2 == 1,
            definition: i % 3 == 0,
        };
        walk(&f, q, None, 0, include).await;
        walk(&f, q, Some(7), 0, include).await;
        walk(&f, q, Some(50), 0, Include::default()).await;
        if i % 4 == 0 {
            walk(&f, q, Some(7), 3, include).await;
        }
        if (1..=12).contains(&total) {
            walk(&f, q, Some(1), 0, include).await;
        }
    }
    assert!(nonempty > qs.len() / 2, "too few queries match anything");
    // Both flags on for a whole walk, and the definition at each record's own version.
    walk(
        &f,
        &Query::default(),
        Some(50),
        0,
        Include {
            state: true,
            definition: true,
        },
    )
    .await;
    // An explicit `false` is the default; `skip=0` too.
    let a = list(&f.server, &f.key.secret, &f.key.org_id, "").await;
    let b = list(
        &f.server,
        &f.key.secret,
        &f.key.org_id,
        "skip=0&count_only=false&include_state=false&include_definition=false",
    )
    .await;
    assert_eq!(a, b);
    // Brackets sent as they are (not percent-encoded) are the same parameters.
    let q = Query::search("variant", "noop");
    let want = model(&f.recs, &q).len();
    let page = list(
        &f.server,
        &f.key.secret,
        &f.key.org_id,
        "search[field]=variant&search[value]=noop&search[op]=eq",
    )
    .await;
    assert_eq!(page["data"]["count"], want);
    f.server.stop().await;
}

/// Input paths are object keys only (SPEC §3.3, `ActionSearch::Input`): a key that looks like
/// an array index never reaches into an array, on any backend. The API refuses all-digit keys;
/// every other key (`-1`, `+1`, ...) must be compared as an object key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn input_paths_never_index_into_arrays() {
    let server = TestServer::start().await;
    let key = server.org_with_key("8008").await;
    let s = key.secret.as_str();
    let d = destination(&server, s, "hook", json!({})).await;
    definition(&server, s, "noop", &[], json!({}), &[&d]).await;
    let mut recs = Vec::new();
    for input in [
        r#"{"arr":[1,2,3]}"#,
        r#"{"arr":{"-1":3,"+1":2,"1 ":2," 1":2}}"#,
        r#"{"arr":[[1],[2]],"m":[{"k":"v"}]}"#,
    ] {
        recs.push(trigger(&server, &key, "noop", input, json!({})).await);
    }
    let mut wrong = Vec::new();
    for (field, value) in [
        ("input.arr.-1", "3"),
        ("input.arr.-3", "1"),
        ("input.arr.+1", "2"),
        ("input.arr. 1", "2"),
        ("input.arr.1 ", "2"),
        ("input.arr.-1.-1", "2"),
        ("input.m.-1.k", "v"),
    ] {
        let q = Query::search(field, value);
        let want: Vec<&str> = model(&recs, &q).iter().map(|r| r.id.as_str()).collect();
        let page = list(&server, s, "8008", &encode(&q.pairs())).await;
        let got = ids(page["data"]["items"].as_array().unwrap());
        if got != want {
            wrong.push(format!("{field}={value}: listed {got:?}, want {want:?}"));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
    server.stop().await;
}

/// Keys with characters that mean something in a JSON path (`$`, `[`, `*`, `\\`, `'`,
/// spaces, non-ASCII) are plain object keys in a search.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn input_paths_with_odd_keys_are_plain_object_keys() {
    let server = TestServer::start().await;
    let key = server.org_with_key("8009").await;
    let s = key.secret.as_str();
    let d = destination(&server, s, "hook", json!({})).await;
    definition(&server, s, "noop", &[], json!({}), &[&d]).await;
    let odd = [
        "b\\s", "a]", "[", "[0]", "*", "a'b", " ", "$", "$x", "é", "a\"", "@", "x,y", "{a}",
        "null", "true",
    ];
    let mut recs = Vec::new();
    for (i, k) in odd.iter().enumerate() {
        let input = json!({ *k: format!("v{i}"), "n": { *k: i }, "other": "v" }).to_string();
        recs.push(trigger(&server, &key, "noop", &input, json!({})).await);
    }
    // Keys the client wrote with JSON escapes are the keys they decode to.
    let escaped = trigger(
        &server,
        &key,
        "noop",
        r#"{"caf\u00e9":"x","\u0041\/b":"y","t\tab":"z"}"#,
        json!({}),
    )
    .await;
    let mut wrong = Vec::new();
    for (field, value) in [
        ("input.café", "x"),
        ("input.A/b", "y"),
        ("input.t\tab", "z"),
    ] {
        let q = Query::search(field, value);
        assert!(q.matches(&escaped), "{field}");
        let page = list(&server, s, "8009", &encode(&q.pairs())).await;
        let got = ids(page["data"]["items"].as_array().unwrap()).join(",");
        if got != escaped.id {
            wrong.push(format!(
                "{field}={value}: listed [{got}], want [{}]",
                escaped.id
            ));
        }
    }
    recs.push(escaped);
    for (i, k) in odd.iter().enumerate() {
        if k.contains('"') {
            continue;
        }
        for (field, value) in [
            (format!("input.{k}"), format!("v{i}")),
            (format!("input.n.{k}"), i.to_string()),
        ] {
            let q = Query::search(&field, &value);
            let want: Vec<&str> = model(&recs, &q).iter().map(|r| r.id.as_str()).collect();
            assert_eq!(want.len(), 1, "{field}");
            let resp = server
                .request(Method::GET, &records_url("8009", &encode(&q.pairs())))
                .header("x-api-key", s)
                .send()
                .await
                .unwrap();
            let status = resp.status();
            let body: Value = resp.json().await.unwrap();
            let got = body["data"]["items"]
                .as_array()
                .map(|items| ids(items).join(","))
                .unwrap_or_default();
            if status != StatusCode::OK || got != want.join(",") {
                wrong.push(format!("{field}={value}: {status} {body}, want {want:?}"));
            }
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Shape.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn items_and_envelope_have_exactly_the_seeds_shape() {
    let server = TestServer::start().await;
    let org = "7001";
    let key = server.org_with_key(org).await;
    let s = key.secret.as_str();
    let cred = post(&server, s, "/v1/credentials", &json!({"label": "signing"})).await;
    let d1 = post(
        &server,
        s,
        "/v1/destinations",
        &json!({"label": "Primary hook", "type": "webhook",
                "config": {"url": format!("https://{PUBLIC}/hooks/primary"),
                           "headers": {"X-Env": "prod"},
                           "signaling": {"enabled": true, "default": "ack"},
                           "response_time_sla_ms": 2500},
                "credential_id": cred["id"], "tags": {"tier": "gold"}}),
    )
    .await;
    let d2 = post(
        &server,
        s,
        "/v1/destinations",
        &json!({"label": "Backup", "config": {"url": format!("http://{PUBLIC}:8080/backup")}}),
    )
    .await;
    let schema = json!({"type": "object", "required": ["to"],
                        "properties": {"to": {"type": "string"}}});
    let def = post(
        &server,
        s,
        "/v1/action-definitions",
        &json!({"variant": "send_email", "alias": ["email"], "schema": schema,
                "destinations": [{"destination_id": d1["id"], "is_default": true},
                                 {"destination_id": d2["id"]}]}),
    )
    .await;
    let rec = trigger(
        &server,
        &key,
        "email",
        r#"{"to":"a@example.com","n":1.5,"nested":{"ok":true}}"#,
        json!({"timeout": 60, "tags": {"team": "a"}}),
    )
    .await;
    // A deleted destination still shows inside the definition, with its deleted_at.
    call(
        &server,
        s,
        Method::DELETE,
        &format!("/v1/destinations/{}", d2["id"].as_str().unwrap()),
        None,
        StatusCode::OK,
    )
    .await;

    // Without the flags: no state, no definition.
    for query in ["", "include_state=false&include_definition=false"] {
        let page = list(&server, s, org, query).await;
        assert_eq!(page["data"]["count"], 1);
        let item = &page["data"]["items"][0];
        assert_eq!(keys(item), ITEM_KEYS, "{item}");
    }
    let only_state = list(&server, s, org, "include_state=true").await;
    let mut want: Vec<&str> = ITEM_KEYS.to_vec();
    want.push("state");
    want.sort_unstable();
    assert_eq!(keys(&only_state["data"]["items"][0]), want);
    let only_def = list(&server, s, org, "include_definition=true").await;
    let mut want: Vec<&str> = ITEM_KEYS.to_vec();
    want.push("definition");
    want.sort_unstable();
    assert_eq!(keys(&only_def["data"]["items"][0]), want);

    let page = list(
        &server,
        s,
        org,
        "include_state=true&include_definition=true",
    )
    .await;
    let item = &page["data"]["items"][0];
    let d = &item["definition"];
    let defs = [Def {
        id: def["id"].as_str().unwrap().to_owned(),
        variant: "send_email".into(),
        alias: vec!["email".into()],
        schemas: vec![schema],
        destinations: vec![
            d1["id"].as_str().unwrap().to_owned(),
            d2["id"].as_str().unwrap().to_owned(),
        ],
    }];
    check_item(
        item,
        &rec,
        &defs,
        org,
        Include {
            state: true,
            definition: true,
        },
    );
    // Types, nested objects, and the links and destinations exactly as the seed prints them.
    assert!(item["timeout"].is_u64() && item["tags"].is_object());
    assert!(d["version"].is_u64() && d["alias"].is_array());
    let links = d["destinations"].as_array().unwrap();
    assert_eq!(links.len(), 2);
    assert_eq!(links[0]["is_default"], true);
    assert_eq!(links[1]["is_default"], false);
    for (link, dest) in links.iter().zip([&d1, &d2]) {
        assert_eq!(link["destination_id"], dest["id"]);
        let nested = &link["destination"];
        assert_eq!(keys(nested), DESTINATION_KEYS, "{nested}");
        assert_eq!(keys(&nested["config"]), CONFIG_KEYS, "{nested}");
        assert_eq!(
            keys(&nested["config"]["signaling"]),
            SIGNALING_KEYS,
            "{nested}"
        );
        assert_eq!(nested["type"], "webhook");
        assert_eq!(nested["org_id"], org);
        assert_eq!(nested["label"], dest["label"]);
        assert_eq!(nested["config"], dest["config"]);
        assert_eq!(nested["credential_id"], dest["credential_id"]);
        assert_eq!(nested["tags"], dest["tags"]);
        check_time(&nested["updated_at"], "updated_at");
    }
    assert_eq!(links[0]["destination"]["credential_id"], cred["id"]);
    assert!(links[0]["destination"]["deleted_at"].is_null());
    check_time(&links[1]["destination"]["deleted_at"], "deleted_at");
    assert_eq!(
        links[1]["destination"]["config"]["response_time_sla_ms"],
        10_000
    );
    let event = &item["events"][0];
    assert_eq!(event["kind"], "created");
    for k in ["timeout_at", "message", "data"] {
        assert!(event[k].is_null(), "{event}");
    }
    // The credential's secret is nowhere.
    let secret = cred["secret"].as_str().unwrap();
    assert!(secret.starts_with("whsec_"));
    assert!(!page.to_string().contains(secret));
    assert_snapshot(CRATE, "actions_records_page", &page, &VOLATILE);

    // An error, in the dialect's envelope.
    let err = list_error(
        &server,
        Some(s),
        org,
        "take=0",
        StatusCode::BAD_REQUEST,
        "invalid_parameter",
        "take",
    )
    .await;
    assert_snapshot(CRATE, "actions_error_take_0", &err, &[]);
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Parameters.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_parameter_has_its_default_and_bounds() {
    let server = TestServer::start().await;
    let org = "5005";
    let key = server.org_with_key(org).await;
    let s = key.secret.as_str();
    let d = destination(&server, s, "only", json!({})).await;
    let def = definition(&server, s, "noop", &["nop"], json!({}), &[&d]).await;
    let mut recs = Vec::new();
    for i in 0..55 {
        let input = format!(r#"{{"i":{i},"deep":{{"k":"v{}"}}}}"#, i % 2);
        recs.push(
            trigger(
                &server,
                &key,
                "noop",
                &input,
                json!({"tags": {"i": i.to_string()}}),
            )
            .await,
        );
    }
    let all = model(&recs, &Query::default());
    let page_ids = |page: &Value| -> Vec<String> {
        ids(page["data"]["items"].as_array().unwrap())
            .into_iter()
            .map(str::to_owned)
            .collect()
    };
    let want_ids = |from: usize, n: usize| -> Vec<String> {
        all[from.min(55)..(from + n).min(55)]
            .iter()
            .map(|r| r.id.clone())
            .collect()
    };

    // take: default 20, bounds 1 and 50; an empty value is absent.
    for (query, n) in [
        ("", 20),
        ("take=", 20),
        ("take=1", 1),
        ("take=50", 50),
        ("take=20", 20),
    ] {
        let page = list(&server, s, org, query).await;
        assert_eq!(page["data"]["count"], 55, "{query}");
        assert_eq!(page_ids(&page), want_ids(0, n), "{query}");
    }
    // skip: default 0, any depth up to the limit.
    for (query, from, n) in [
        ("skip=0", 0, 20),
        ("skip=54", 54, 20),
        ("skip=55", 55, 20),
        ("skip=1000000&take=5", 55, 5),
        ("skip=10&take=3", 10, 3),
    ] {
        let page = list(&server, s, org, query).await;
        assert_eq!(page["data"]["count"], 55, "{query}");
        assert_eq!(page_ids(&page), want_ids(from, n), "{query}");
    }
    let bad: &[(&str, &str)] = &[
        ("take=0", "take"),
        ("take=51", "take"),
        ("take=-1", "take"),
        ("take=abc", "take"),
        ("take=1.5", "take"),
        ("take=99999999999999999999", "take"),
        ("take=5&take=6", "take"),
        ("skip=-1", "skip"),
        ("skip=abc", "skip"),
        ("skip=1000001", "skip"),
        ("skip=99999999999999999999", "skip"),
        ("version=0", "version"),
        ("version=-1", "version"),
        ("version=abc", "version"),
        ("version=4294967296", "version"),
        ("count_only=1", "count_only"),
        ("count_only=yes", "count_only"),
        ("count_only=TRUE", "count_only"),
        ("include_state=True", "include_state"),
        ("include_state=0", "include_state"),
        ("include_definition=on", "include_definition"),
        ("include_definition=false1", "include_definition"),
        // Both spellings of the search at once.
        (
            "search[field]=variant&field=variant&search[value]=noop",
            "field",
        ),
        (
            "search[field]=variant&search[value]=noop&value=noop",
            "value",
        ),
        (
            "search[field]=variant&search[value]=noop&search[op]=eq&op=eq",
            "op",
        ),
        // Operators other than eq.
        (
            "search[field]=variant&search[value]=noop&search[op]=ne",
            "search[op]",
        ),
        (
            "search[field]=variant&search[value]=noop&search[op]=EQ",
            "search[op]",
        ),
        ("field=variant&value=noop&op=contains", "search[op]"),
        // A field without a value, a value without a field.
        ("search[field]=variant", "search[value]"),
        ("field=variant", "search[value]"),
        ("search[value]=noop", "search[field]"),
        ("value=noop", "search[field]"),
        // Fields that are not searchable, and input paths that are not dotted object keys.
        ("search[field]=foo&search[value]=x", "search[field]"),
        ("search[field]=org_id&search[value]=x", "search[field]"),
        ("search[field]=state&search[value]=x", "search[field]"),
        (
            "search[field]=state.attempt&search[value]=1",
            "search[field]",
        ),
        (
            "search[field]=definition.variant&search[value]=x",
            "search[field]",
        ),
        ("search[field]=tags.&search[value]=x", "search[field]"),
        ("search[field]=tags&search[value]=x", "search[field]"),
        ("search[field]=input&search[value]=x", "search[field]"),
        ("search[field]=input.&search[value]=x", "search[field]"),
        ("search[field]=input.a..b&search[value]=x", "search[field]"),
        ("search[field]=input.a.&search[value]=x", "search[field]"),
        ("search[field]=input.0&search[value]=x", "search[field]"),
        ("search[field]=input.arr.1&search[value]=x", "search[field]"),
        (
            "search[field]=input.%22a%22&search[value]=x",
            "search[field]",
        ),
        ("field=ID&value=x", "search[field]"),
        // `search` is an object of field, value and op (deepObject): no other key, and no
        // bare value (the document's additionalProperties false).
        ("search[]=0", "search[]"),
        ("search[fields]=id&search[value]=x", "search[fields]"),
        (
            "search[field]=id&search[value]=x&search[value2]=y",
            "search[value2]",
        ),
        ("search=id", "search"),
    ];
    for (query, mention) in bad {
        list_error(
            &server,
            Some(s),
            org,
            query,
            StatusCode::BAD_REQUEST,
            "invalid_parameter",
            mention,
        )
        .await;
    }
    // Input paths: at most 32 keys; values at most 1000 characters; variants at most 100.
    let deep = |n: usize| vec!["k"; n].join(".");
    let ok_path = encode(&[
        ("search[field]", format!("input.{}", deep(32))),
        ("search[value]", "x".into()),
    ]);
    assert_eq!(list(&server, s, org, &ok_path).await["data"]["count"], 0);
    let long_path = encode(&[
        ("search[field]", format!("input.{}", deep(33))),
        ("search[value]", "x".into()),
    ]);
    list_error(
        &server,
        Some(s),
        org,
        &long_path,
        StatusCode::BAD_REQUEST,
        "invalid_parameter",
        "search[field]",
    )
    .await;
    let value = |n: usize| encode(&[("field", "variant".to_owned()), ("value", "v".repeat(n))]);
    assert_eq!(
        list(&server, s, org, &value(1000)).await["data"]["count"],
        0
    );
    list_error(
        &server,
        Some(s),
        org,
        &value(1001),
        StatusCode::BAD_REQUEST,
        "invalid_parameter",
        "search[value]",
    )
    .await;
    let variant = |n: usize| encode(&[("variant", "v".repeat(n))]);
    assert_eq!(
        list(&server, s, org, &variant(100)).await["data"]["count"],
        0
    );
    list_error(
        &server,
        Some(s),
        org,
        &variant(101),
        StatusCode::BAD_REQUEST,
        "invalid_parameter",
        "variant",
    )
    .await;
    // The accepted spellings all search; `op` alone is no search.
    for query in [
        "search[field]=input.deep.k&search[value]=v1",
        "search%5Bfield%5D=input.deep.k&search%5Bvalue%5D=v1&search%5Bop%5D=eq",
        "field=input.deep.k&value=v1",
        "field=input.deep.k&value=v1&op=eq",
    ] {
        let page = list(&server, s, org, &format!("{query}&take=50")).await;
        let want: Vec<String> = all
            .iter()
            .filter(|r| r.input["deep"]["k"] == "v1")
            .map(|r| r.id.clone())
            .collect();
        assert_eq!(page["data"]["count"], want.len(), "{query}");
        assert_eq!(page_ids(&page), want, "{query}");
    }
    for query in ["op=eq", "search[op]=eq"] {
        assert_eq!(list(&server, s, org, query).await["data"]["count"], 55);
    }
    // The filters: a definition id that is no UUID matches nothing (not an error).
    for (query, n) in [
        (format!("action_definition_id={}", def.id), 55),
        ("action_definition_id=nope".to_owned(), 0),
        ("variant=noop".to_owned(), 55),
        ("variant=nop".to_owned(), 0),
        ("version=1".to_owned(), 55),
        ("version=4294967295".to_owned(), 0),
        ("count_only=true&take=50&skip=999".to_owned(), 55),
    ] {
        assert_eq!(
            list(&server, s, org, &query).await["data"]["count"],
            n,
            "{query}"
        );
    }

    // org_id: digits only (400), then the caller's own (404 otherwise, as for no org at all).
    for bad_org in ["abc", "12a", "-5", "1.0", "%205005", "5005%20", "5e3"] {
        list_error(
            &server,
            Some(s),
            bad_org,
            "",
            StatusCode::BAD_REQUEST,
            "invalid_parameter",
            "org_id",
        )
        .await;
    }
    let other = server.org_with_key("6006").await;
    let not_yours = list_error(
        &server,
        Some(s),
        "6006",
        "",
        StatusCode::NOT_FOUND,
        "not_found",
        "",
    )
    .await;
    for missing in ["999999", "05005", "0"] {
        let body = list_error(
            &server,
            Some(s),
            missing,
            "",
            StatusCode::NOT_FOUND,
            "not_found",
            "",
        )
        .await;
        assert_eq!(body, not_yours, "another org and no org look the same");
    }
    // Authentication first, then the path, then the scope.
    list_error(
        &server,
        None,
        org,
        "",
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "",
    )
    .await;
    list_error(
        &server,
        None,
        "abc",
        "take=0",
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "",
    )
    .await;
    list_error(
        &server,
        Some("atk_0000000000000000000000000000000000000000"),
        org,
        "",
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "",
    )
    .await;
    let revoked = server.create_key(org, &["read"]).await;
    call(
        &server,
        s,
        Method::DELETE,
        &format!("/v1/api-keys/{}", revoked.id),
        None,
        StatusCode::OK,
    )
    .await;
    list_error(
        &server,
        Some(&revoked.secret),
        org,
        "",
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "",
    )
    .await;
    let writer = server.create_key(org, &["write", "admin"]).await;
    list_error(
        &server,
        Some(&writer.secret),
        org,
        "",
        StatusCode::FORBIDDEN,
        "forbidden",
        "read",
    )
    .await;
    let reader = server.create_key(org, &["read"]).await;
    assert_eq!(
        list(&server, &reader.secret, org, "").await["data"]["count"],
        55
    );
    // The operator token is no org key.
    let resp = server
        .operator(Method::GET, &records_url(org, ""))
        .send()
        .await
        .unwrap();
    let body = expect(resp, StatusCode::FORBIDDEN).await;
    check_error(&body, "forbidden", "");
    // Every carrier of the key works.
    for (name, value) in [
        ("authorization", format!("Bearer {s}")),
        ("x-api-key", s.to_owned()),
        ("cookie", format!("better-auth.session_token={s}")),
    ] {
        let resp = server
            .request(Method::GET, &records_url(org, "count_only=true"))
            .header(name, value)
            .send()
            .await
            .unwrap();
        assert_eq!(expect(resp, StatusCode::OK).await["data"]["count"], 55);
    }
    // Other methods are refused in the same envelope.
    let resp = server
        .request(Method::POST, &records_url(org, ""))
        .header("x-arklow-auth", s)
        .send()
        .await
        .unwrap();
    let body = expect(resp, StatusCode::METHOD_NOT_ALLOWED).await;
    assert_eq!(keys(&body), ["data", "errors"], "{body}");
    assert!(body["data"].is_null());
    assert_eq!(other.org_id, "6006");
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Isolation.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_org_never_sees_these_records() {
    let server = TestServer::start().await;
    let a = server.org_with_key("3001").await;
    let b = server.org_with_key("3002").await;
    let mut by_org: Vec<(TestKey, Def, Vec<Rec>)> = Vec::new();
    for (key, n) in [(&a, 12), (&b, 3)] {
        let s = key.secret.as_str();
        let d = destination(&server, s, "hook", json!({})).await;
        // The same variant in both orgs.
        let def = definition(&server, s, "send_email", &["email"], json!({}), &[&d]).await;
        let mut recs = Vec::new();
        for i in 0..n {
            recs.push(
                trigger(
                    &server,
                    key,
                    "send_email",
                    &format!(r#"{{"i":{i}}}"#),
                    json!({"tags": {"team": "a"}}),
                )
                .await,
            );
        }
        by_org.push((key.clone(), def, recs));
    }
    for (me, mine, my_recs) in &by_org {
        let (_, theirs, their_recs) = by_org.iter().find(|(k, ..)| k.org_id != me.org_id).unwrap();
        let s = me.secret.as_str();
        let org = me.org_id.as_str();
        // Its own list holds its own records only, whatever the filter.
        let want: Vec<&str> = model(my_recs, &Query::default())
            .iter()
            .map(|r| r.id.as_str())
            .collect();
        for query in [
            "take=50",
            "take=50&variant=send_email",
            "take=50&search[field]=tags.team&search[value]=a",
            "take=50&search[field]=variant&search[value]=send_email",
        ] {
            let page = list(&server, s, org, query).await;
            assert_eq!(page["data"]["count"], my_recs.len(), "{query}");
            assert_eq!(ids(page["data"]["items"].as_array().unwrap()), want);
        }
        // The other org's ids match nothing here.
        for r in their_recs {
            let page = list(&server, s, org, &format!("field=id&value={}", r.id)).await;
            assert_eq!(page["data"]["count"], 0);
            assert_eq!(page["data"]["items"], json!([]));
        }
        for query in [
            format!("action_definition_id={}", theirs.id),
            format!(
                "search[field]=action_definition_id&search[value]={}",
                theirs.id
            ),
        ] {
            assert_eq!(list(&server, s, org, &query).await["data"]["count"], 0);
        }
        assert_ne!(mine.id, theirs.id);
        // The other org's path is a 404, with or without parameters, and so is a bad
        // parameter there: nothing about it shows.
        let other = if org == "3001" { "3002" } else { "3001" };
        for query in [
            "",
            "count_only=true",
            "take=50&include_definition=true",
            "take=0",
        ] {
            list_error(
                &server,
                Some(s),
                other,
                query,
                StatusCode::NOT_FOUND,
                "not_found",
                "",
            )
            .await;
        }
    }
    // A fresh org sees an empty list, and nothing of the others by id.
    let c = server.org_with_key("3003").await;
    let page = list(&server, &c.secret, "3003", "").await;
    assert_eq!(page["data"], json!({"items": [], "count": 0}));
    for (_, _, recs) in &by_org {
        let page = list(
            &server,
            &c.secret,
            "3003",
            &format!("search[field]=id&search[value]={}", recs[0].id),
        )
        .await;
        assert_eq!(page["data"]["count"], 0);
    }
    server.stop().await;
}

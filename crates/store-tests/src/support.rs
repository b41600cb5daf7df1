//! Fixtures and the reference model the stories compare every backend against.
//!
//! The reference model is the model crate itself: [`LogFilter::matches`] decides which logs a
//! query must return and [`Sort::before`] decides their order, so no story hard-codes an
//! expected page; it computes it from the records it stored.

use std::cmp::Ordering;
use std::fmt;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::pin::Pin;
use std::task::Poll;

use apitrail_model::{
    ActionEvent, ActionRecord, ActionState, ActionStatus, ApiKey, AuditEntry, Destination,
    LogFilter, Org, OrgId, PageRequest, PageStart, PrincipalType, RequestId, RequestLog, Scope,
    Secret, Sort, SortDir, SortKey, Tags, Tenant, Timestamp, WebhookConfig, new_record_id,
};
use apitrail_store::{InsertOutcome, LogBatch, Store, StoreError};
use fastrand::Rng;
use uuid::Uuid;

/// 2024-05-01T12:00:00Z: the instant most fixtures are placed around.
pub const BASE_MS: i64 = 1_714_564_800_000;
/// The earliest instant the model can hold (0001-01-01T00:00:00Z).
pub const MIN_MS: i64 = -62_135_596_800_000;
/// The latest instant the model can hold (9999-12-31T23:59:59.999Z).
pub const MAX_MS: i64 = 253_402_300_799_999;

/// Every order a request-log list can be asked for.
pub const ALL_SORTS: [Sort; 6] = [
    Sort {
        key: SortKey::CreatedAt,
        dir: SortDir::Desc,
    },
    Sort {
        key: SortKey::CreatedAt,
        dir: SortDir::Asc,
    },
    Sort {
        key: SortKey::DurationMs,
        dir: SortDir::Desc,
    },
    Sort {
        key: SortKey::DurationMs,
        dir: SortDir::Asc,
    },
    Sort {
        key: SortKey::StatusCode,
        dir: SortDir::Desc,
    },
    Sort {
        key: SortKey::StatusCode,
        dir: SortDir::Asc,
    },
];

/// A timestamp from Unix milliseconds; panics outside the model's range (a fixture bug).
pub fn ts(ms: i64) -> Timestamp {
    Timestamp::from_millis(ms).expect("fixture timestamp within the supported years")
}

/// [`BASE_MS`] moved by `offset_ms`.
pub fn at(offset_ms: i64) -> Timestamp {
    ts(BASE_MS + offset_ms)
}

/// A random (version 4) UUID drawn from `rng`, so that id order is independent of insertion
/// order (ids from [`new_record_id`] only ever grow).
pub fn random_id(rng: &mut Rng) -> Uuid {
    let mut bytes = [0u8; 16];
    rng.fill(&mut bytes);
    uuid::Builder::from_random_bytes(bytes).into_uuid()
}

/// An org id, panicking on a fixture typo.
pub fn org_id(id: &str) -> OrgId {
    OrgId::parse(id).expect("fixture org id is valid")
}

/// An audit entry with every field filled.
pub fn audit_entry(
    action: &str,
    resource_type: &str,
    resource_id: &str,
    created_at: Timestamp,
) -> AuditEntry {
    AuditEntry {
        id: new_record_id(),
        user_id: Some("principal_ops".into()),
        action: action.into(),
        resource_type: resource_type.into(),
        resource_id: Some(resource_id.into()),
        details: Some(format!(
            r#"{{"{resource_type}":{{"id":"{resource_id}","note":"Ünïcødé ✓"}}}}"#
        )),
        ip_address: Some("2001:db8::7".into()),
        request_id: Some(RequestId::generate().as_str().to_owned()),
        created_at,
    }
}

/// Creates org `id` (with its creation audit entry) and returns its tenant.
pub async fn new_org(store: &dyn Store, id: &str) -> Tenant {
    let org = Org {
        id: org_id(id),
        name: format!("Org {id}"),
        created_at: at(0),
    };
    let audit = audit_entry("create", "org", id, org.created_at);
    store
        .create_org(&org, &audit)
        .await
        .unwrap_or_else(|e| panic!("create_org({id}) failed: {e:?}"))
}

/// A fresh key of `tenant`'s org and its secret.
pub fn new_key(tenant: &Tenant, name: &str, created_at: Timestamp) -> (ApiKey, Secret) {
    let key = ApiKey {
        id: new_record_id(),
        org_id: tenant.org_id().clone(),
        name: name.into(),
        scopes: [Scope::Read, Scope::Write].into_iter().collect(),
        principal_type: PrincipalType::User,
        principal_id: format!("principal_{name}"),
        user_id: Some(format!("user_{name}")),
        email: Some(format!("{name}@example.com")),
        service_account_id: None,
        created_at,
        last_used_at: None,
        revoked_at: None,
    };
    (key, Secret::generate())
}

/// Stores `key` with its creation audit entry; returns that entry.
pub async fn store_key(
    store: &dyn Store,
    tenant: &Tenant,
    key: &ApiKey,
    secret: &Secret,
) -> AuditEntry {
    let audit = audit_entry("create", "api_key", &key.id.to_string(), key.created_at);
    store
        .create_api_key(tenant, key, &secret.hash(), &audit)
        .await
        .unwrap_or_else(|e| panic!("create_api_key({}) failed: {e:?}", key.id));
    audit
}

/// Inserts `logs` as one batch of `tenant`.
pub async fn insert(store: &dyn Store, tenant: &Tenant, logs: &[RequestLog]) -> InsertOutcome {
    store
        .insert_request_logs(vec![LogBatch::new(tenant.clone(), logs.to_vec())])
        .await
        .unwrap_or_else(|e| panic!("insert_request_logs of {} logs failed: {e:?}", logs.len()))
}

/// Inserts `logs` in batches of `chunk`, asserting that all are new.
pub async fn insert_all_new(store: &dyn Store, tenant: &Tenant, logs: &[RequestLog], chunk: usize) {
    for part in logs.chunks(chunk.max(1)) {
        let outcome = insert(store, tenant, part).await;
        assert_eq!(
            outcome,
            InsertOutcome {
                accepted: part.len() as u64,
                duplicates: 0
            },
            "fresh logs must all be accepted"
        );
    }
}

/// Route templates shared by every org.
pub const ROUTES: [&str; 5] = [
    "/v1/users",
    "/v1/users/{id}",
    "/v1/orders",
    "/v1/orders/{id}/items",
    "/healthz",
];
/// Status codes, with duplicates to weight the common ones.
pub const STATUSES: [u16; 11] = [200, 200, 200, 201, 204, 301, 400, 404, 429, 500, 503];
/// Auth types shared by every org.
pub const AUTH_TYPES: [&str; 3] = ["api_key", "session", "jwt"];
/// API key ids shared by every org.
pub const API_KEY_IDS: [&str; 4] = [
    "0190f0a0-0000-7000-8000-000000000001",
    "0190f0a0-0000-7000-8000-000000000002",
    "0190f0a0-0000-7000-8000-000000000003",
    "0190f0a0-0000-7000-8000-000000000004",
];
/// User ids shared by every org.
pub const USERS: [&str; 6] = ["user_1", "user_2", "user_3", "user_4", "user_5", "user_6"];
/// Service accounts shared by every org.
pub const SERVICE_ACCOUNTS: [&str; 2] = ["sa_1", "sa_2"];

/// Generates request logs with many ties on every sort key, from a seed.
///
/// `created_at` falls in a window of `span_ms` milliseconds after [`BASE_MS`] (so a few
/// thousand logs share each instant several times over), with a sprinkle of extreme instants;
/// `duration_ms` takes few values and is sometimes unknown; request ids come in both spellings
/// (`tok7` and `req_tok7`).
#[derive(Debug)]
pub struct LogGen {
    /// The generator's randomness, also usable by the story.
    pub rng: Rng,
    /// Width of the `created_at` window.
    pub span_ms: i64,
    tag: String,
}

impl LogGen {
    /// A generator for an org tagged `tag` (it appears in the org's only-here values).
    pub fn new(seed: u64, tag: &str) -> Self {
        Self {
            rng: Rng::with_seed(seed),
            span_ms: 400,
            tag: tag.into(),
        }
    }

    /// The user id only this generator produces.
    pub fn own_user(&self) -> String {
        format!("user_only_{}", self.tag)
    }

    /// One log.
    pub fn log(&mut self) -> RequestLog {
        let rng = &mut self.rng;
        let id = if rng.u8(..10) < 7 {
            new_record_id()
        } else {
            random_id(rng)
        };
        let created_ms = match rng.u16(..200) {
            0 => MIN_MS,
            1 => -1,
            2 => 0,
            3 => MAX_MS,
            _ => BASE_MS + rng.i64(0..self.span_ms),
        };
        let duration_ms = match rng.u8(..100) {
            0..15 => None,
            15..20 => Some(rng.i64(0..=i64::from(i32::MAX))),
            _ => Some(rng.i64(0..30)),
        };
        let method = match rng.u8(..100) {
            0..40 => "GET",
            40..65 => "POST",
            65..75 => "PUT",
            75..85 => "DELETE",
            85..98 => "PATCH",
            _ => "PROPFIND",
        };
        let status_code = STATUSES[rng.usize(..STATUSES.len())];
        let route_pattern = (rng.u8(..10) > 0).then(|| ROUTES[rng.usize(..ROUTES.len())].into());
        let request_id = (rng.u8(..4) > 0).then(|| {
            let token = rng.u8(..40);
            if rng.bool() {
                format!("req_tok{token}")
            } else {
                format!("tok{token}")
            }
        });
        let auth_type = (rng.u8(..100) < 85).then(|| AUTH_TYPES[rng.usize(..3)].into());
        let api_key_id = (rng.u8(..10) < 6).then(|| API_KEY_IDS[rng.usize(..4)].into());
        let user_id = match rng.u8(..100) {
            0..30 => None,
            30..35 => Some(format!("user_only_{}", self.tag)),
            _ => Some(USERS[rng.usize(..USERS.len())].into()),
        };
        let service_account_id =
            (rng.u8(..10) < 2).then(|| SERVICE_ACCOUNTS[rng.usize(..2)].into());
        let client_ip = match rng.u8(..3) {
            0 => None,
            1 => Some(IpAddr::V4(Ipv4Addr::from(rng.u32(..)))),
            _ => Some(IpAddr::V6(Ipv6Addr::from(rng.u128(..)))),
        };
        let started = rng.bool().then(|| ts(created_ms));
        RequestLog {
            id,
            request_id,
            method: method.into(),
            path: format!("/v1/things/{}", rng.u32(..1000)),
            query: rng.bool().then(|| format!("page={}", rng.u8(..))),
            route_pattern,
            status_code,
            error_code: (status_code >= 400).then(|| format!("E{status_code}")),
            duration_ms,
            started_at: started,
            completed_at: started.map(|s| s.add_millis(duration_ms.unwrap_or(0))),
            created_at: ts(created_ms),
            client_ip,
            user_agent: rng.bool().then(|| "curl/8.5.0".into()),
            origin: rng.bool().then(|| "https://app.example.com".into()),
            auth_type,
            principal_type: rng.bool().then(|| "user".into()),
            principal_id: rng.bool().then(|| format!("p_{}", rng.u8(..5))),
            user_id,
            email: rng.bool().then(|| "someone@example.com".into()),
            api_key_id,
            service_account_id,
            request_body: rng.bool().then(|| r#"{"name":"Zoë"}"#.into()),
            request_body_truncated: rng.u8(..10) == 0,
            response_body: rng.bool().then(|| r#"{"ok":true}"#.into()),
            response_body_truncated: rng.u8(..10) == 0,
            price: rng
                .bool()
                .then(|| format!("{}.{:02}", rng.u8(..20), rng.u8(..100))),
            minutes: rng.bool().then(|| rng.i64(0..10)),
            seconds: rng.bool().then(|| rng.i64(0..600)),
            stripe_invoice_item_id: (rng.u8(..10) == 0).then(|| "ii_123".into()),
            metadata: rng.bool().then(|| r#"{"region":"eu-west-1"}"#.into()),
        }
    }

    /// `n` logs.
    pub fn logs(&mut self, n: usize) -> Vec<RequestLog> {
        (0..n).map(|_| self.log()).collect()
    }
}

/// Sets `log`'s value of sort key `key` to `value` (as [`Sort::key_of`] reports it).
pub fn set_sort_key(log: &mut RequestLog, key: SortKey, value: i64) {
    match key {
        SortKey::CreatedAt => log.created_at = ts(value),
        SortKey::DurationMs => log.duration_ms = (value >= 0).then_some(value),
        SortKey::StatusCode => {
            log.status_code = u16::try_from(value).expect("status code fits in u16");
        }
    }
}

/// How `a` and `b` compare in `sort` (the model's definition, via [`Sort::before`]).
pub fn order(sort: Sort, a: &RequestLog, b: &RequestLog) -> Ordering {
    let (pa, pb) = (sort.position_of(a), sort.position_of(b));
    if sort.before(&pa, &pb) {
        Ordering::Less
    } else if sort.before(&pb, &pa) {
        Ordering::Greater
    } else {
        Ordering::Equal
    }
}

/// What a list query must return: the logs that match `filter`, in `sort` order.
pub fn reference(logs: &[RequestLog], filter: &LogFilter, sort: Sort) -> Vec<RequestLog> {
    let mut out: Vec<RequestLog> = logs.iter().filter(|l| filter.matches(l)).cloned().collect();
    out.sort_by(|a, b| order(sort, a, b));
    out
}

/// The ids of `logs`, in order.
pub fn ids(logs: &[RequestLog]) -> Vec<Uuid> {
    logs.iter().map(|l| l.id).collect()
}

/// Asserts that `actual` is exactly `expected`: the same records, field for field, in the same
/// order. On a mismatch it reports the first differing position rather than two huge lists.
pub fn assert_same_logs(
    actual: &[RequestLog],
    expected: &[RequestLog],
    context: &dyn fmt::Display,
) {
    let (a, e) = (ids(actual), ids(expected));
    if a != e {
        let i = a.iter().zip(&e).take_while(|(x, y)| x == y).count();
        panic!(
            "{context}: got {} logs, expected {}; first difference at index {i}: got {:?}, expected {:?}",
            a.len(),
            e.len(),
            actual
                .get(i)
                .map(|l| (l.id, l.created_at, l.duration_ms, l.status_code)),
            expected
                .get(i)
                .map(|l| (l.id, l.created_at, l.duration_ms, l.status_code)),
        );
    }
    for (got, want) in actual.iter().zip(expected) {
        assert_eq!(got, want, "{context}: log {} did not round-trip", want.id);
    }
}

/// A complete keyset walk over one list query.
#[derive(Debug)]
pub struct Walk {
    /// Every item of every page, in order.
    pub items: Vec<RequestLog>,
    /// How many pages were read.
    pub pages: usize,
}

/// Reads every page of a query, each resuming after the previous page's last item, and checks
/// the page invariants on the way: no page exceeds `limit`, a page that promises more is full,
/// and a promised page is never empty.
pub async fn walk(
    store: &dyn Store,
    tenant: &Tenant,
    filter: &LogFilter,
    sort: Sort,
    limit: u32,
) -> Walk {
    let mut items = Vec::new();
    let mut start = PageStart::First;
    let mut pages = 0usize;
    loop {
        let page = store
            .list_request_logs(tenant, filter, sort, PageRequest { limit, start })
            .await
            .unwrap_or_else(|e| panic!("list_request_logs({filter:?}, {sort:?}) failed: {e:?}"));
        pages += 1;
        let ctx = format!("page {pages} of {filter:?} in {sort:?} with limit {limit}");
        assert!(
            page.items.len() <= limit as usize,
            "{ctx}: more items than the limit"
        );
        if page.has_more {
            assert_eq!(
                page.items.len(),
                limit as usize,
                "{ctx}: has_more on a short page"
            );
        }
        if pages > 1 {
            assert!(
                !page.items.is_empty(),
                "{ctx}: has_more promised a page that is empty"
            );
        }
        let last = page.items.last().map(|l| sort.position_of(l));
        items.extend(page.items);
        match (page.has_more, last) {
            (true, Some(pos)) => start = PageStart::After(pos),
            _ => break,
        }
        assert!(pages < 50_000, "{ctx}: the walk does not end");
    }
    Walk { items, pages }
}

/// The number of pages a walk over `n` items with `limit` must take.
pub fn expected_pages(n: usize, limit: u32) -> usize {
    n.div_ceil(limit as usize).max(1)
}

/// Polls all `futures` concurrently on the current task and returns their outputs in order.
///
/// The store's work runs on its own threads (or server), so futures polled together are
/// genuinely concurrent submissions; this keeps the suite free of `'static` bounds (the
/// stories borrow the store) and of extra dependencies.
pub async fn join_all<F: Future>(futures: impl IntoIterator<Item = F>) -> Vec<F::Output> {
    let mut futures: Vec<Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut done = true;
        for (future, output) in futures.iter_mut().zip(outputs.iter_mut()) {
            if output.is_none() {
                match future.as_mut().poll(cx) {
                    Poll::Ready(v) => *output = Some(v),
                    Poll::Pending => done = false,
                }
            }
        }
        if done { Poll::Ready(()) } else { Poll::Pending }
    })
    .await;
    outputs
        .into_iter()
        .map(|o| o.expect("every future completed"))
        .collect()
}

/// A pending record of `definition_id`, due at `available_at`.
pub fn pending(
    definition_id: Uuid,
    variant: &str,
    created_at: Timestamp,
    available_at: Timestamp,
) -> ActionRecord {
    ActionRecord {
        id: new_record_id(),
        definition_id,
        version: 1,
        variant: variant.into(),
        input: r#"{"to":"ann@example.com","amount":1.5,"note":"Zoë ✓"}"#.into(),
        timeout_secs: 300,
        tags: [("team".to_owned(), "payments".to_owned())]
            .into_iter()
            .collect(),
        destination_id: new_record_id(),
        request_id: Some("req_actions".into()),
        created_at,
        state: ActionState {
            status: ActionStatus::Pending,
            attempt: 0,
            updated_at: created_at,
            available_at,
            timeout_at: None,
            started_at: None,
            completed_at: None,
            error_message: None,
        },
    }
}

/// Stores `record` with its `created` event; returns the event.
pub async fn create_record(
    store: &dyn Store,
    tenant: &Tenant,
    record: &ActionRecord,
) -> ActionEvent {
    let event = ActionEvent::of(record, "created", None);
    store
        .create_action_record(tenant, record, &event)
        .await
        .unwrap_or_else(|e| panic!("create_action_record({}) failed: {e:?}", record.id));
    event
}

/// The destination a backend's upgrade test writes in the schema from before the SSRF decision
/// was recorded: `id`, labelled `old hook`, at `url`, no headers, tags or credential, signaling
/// off, a 5,000 ms SLA, created and updated at Unix millisecond 1,000, not deleted.
pub fn old_destination(id: Uuid, url: &str) -> Destination {
    Destination {
        id,
        label: "old hook".into(),
        config: WebhookConfig {
            url: url.into(),
            headers: Tags::new(),
            signaling: false,
            response_time_sla_ms: 5_000,
        },
        credential_id: None,
        tags: Tags::new(),
        allow_private: None,
        created_at: ts(1_000),
        updated_at: ts(1_000),
        deleted_at: None,
    }
}

/// After an upgrade, `old` (an [`old_destination`] of `tenant`) reads back whole with no
/// recorded decision (`allow_private: None`, so the delivering server's flag decides), and a
/// change records one.
pub async fn assert_upgraded_destination(store: &dyn Store, tenant: &Tenant, old: &Destination) {
    assert_eq!(
        old.allow_private, None,
        "a fixture from before the decision"
    );
    let read = store
        .get_destination(tenant, old.id)
        .await
        .expect("get_destination");
    assert_eq!(read.as_ref(), Some(old), "read after the upgrade");
    let listed = store
        .list_destinations(tenant, false)
        .await
        .expect("list_destinations");
    assert_eq!(
        listed,
        std::slice::from_ref(old),
        "listed after the upgrade"
    );
    let changed = Destination {
        allow_private: Some(true),
        updated_at: ts(2_000),
        ..old.clone()
    };
    store
        .put_destination(
            tenant,
            &changed,
            false,
            &audit_entry("update", "destination", &old.id.to_string(), ts(2_000)),
        )
        .await
        .expect("put_destination");
    assert_eq!(
        store
            .get_destination(tenant, old.id)
            .await
            .expect("get_destination"),
        Some(changed),
        "a change records the decision"
    );
}

/// A `client_ip` that is no address, written behind the store's back into one of the
/// [`undecodable_logs`].
pub const UNDECODABLE_IP: &str = "not an address";
/// A `started_at` and `completed_at` beyond the model's range, written likewise.
pub const UNDECODABLE_MS: i64 = i64::MAX;
/// A status code beyond the model's range (a required value), written likewise.
pub const UNDECODABLE_STATUS: i32 = 70_000;

/// Four complete request logs for [`assert_undecodable_values`]: the test stores the first
/// three for one org and the last for another, then writes behind the store's back
/// [`UNDECODABLE_IP`] into the first one's `client_ip`, [`UNDECODABLE_MS`] into the second
/// one's `started_at` and `completed_at`, and [`UNDECODABLE_STATUS`] into the last one's
/// `status_code`.
pub fn undecodable_logs() -> Vec<RequestLog> {
    let mut generator = LogGen::new(61, "undecodable");
    (0..4)
        .map(|i| {
            let mut log = generator.log();
            log.id = new_record_id();
            log.created_at = at(i);
            log.client_ip = Some(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7)));
            log.started_at = Some(at(i - 5));
            log.completed_at = Some(at(i));
            log
        })
        .collect()
}

/// The answer every backend gives for stored values that cannot be decoded (see
/// `apitrail_store::stored`): in `optional`'s listing and by id, an undecodable optional
/// field reads as unknown and the rest of the record, and the org's other records, read
/// whole; `required`'s record, whose status code cannot be decoded, fails the read as
/// corrupt (a backend error), in its listing and by id.
pub async fn assert_undecodable_values(
    store: &dyn Store,
    optional: &Tenant,
    required: &Tenant,
    logs: &[RequestLog],
) {
    let mut expected = logs[..3].to_vec();
    expected[0].client_ip = None;
    expected[1].started_at = None;
    expected[1].completed_at = None;
    let sort = ALL_SORTS[0];
    let page = PageRequest {
        start: PageStart::First,
        limit: 10,
    };
    let listed = store
        .list_request_logs(optional, &LogFilter::default(), sort, page)
        .await
        .expect("a listing with undecodable optional values is answered");
    assert!(!listed.has_more);
    assert_same_logs(
        &listed.items,
        &reference(&expected, &LogFilter::default(), sort),
        &"undecodable optional values read as unknown",
    );
    for log in &expected {
        let read = store
            .get_request_log(optional, log.id)
            .await
            .expect("a record with an undecodable optional value is answered");
        assert_eq!(read.as_ref(), Some(log), "read by id");
    }
    let bad = &logs[3];
    match store
        .list_request_logs(required, &LogFilter::default(), sort, page)
        .await
    {
        Err(StoreError::Backend(_)) => {}
        other => panic!("an undecodable status code fails the listing, got {other:?}"),
    }
    match store.get_request_log(required, bad.id).await {
        Err(StoreError::Backend(_)) => {}
        other => panic!("an undecodable status code fails the read, got {other:?}"),
    }
}

/// Asserts that calls into `store` are traced as `debug` spans named after the method, with
/// the org and counts among their fields, and that no span carries a secret or its hash
/// (see [`Store`]). Run it on a current-thread runtime: it captures the spans that close on
/// this thread.
pub async fn assert_calls_are_traced(store: &dyn Store) {
    let logged = CapturedLog::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(logged.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::DEBUG)
        .with_span_events(tracing_subscriber::fmt::format::FmtSpan::CLOSE)
        .finish();
    let guard = tracing::subscriber::set_default(subscriber);
    // Other tests of the same process call the same methods at the same moment without a
    // subscriber: a callsite they registered while this one was being set may have cached
    // "never" for every subscriber. Rebuilding the cache before each call settles it.
    let settle = tracing::callsite::rebuild_interest_cache;
    settle();
    let tenant = new_org(store, "traced").await;
    let (key, secret) = new_key(&tenant, "traced", at(0));
    settle();
    store_key(store, &tenant, &key, &secret).await;
    settle();
    let found = store
        .authenticate(&secret.hash())
        .await
        .expect("authenticate");
    assert!(found.is_some(), "the key authenticates");
    let page = PageRequest {
        start: PageStart::First,
        limit: 7,
    };
    settle();
    store
        .list_request_logs(&tenant, &LogFilter::default(), ALL_SORTS[0], page)
        .await
        .expect("list_request_logs");
    settle();
    insert(store, &tenant, &LogGen::new(5, "traced").logs(2)).await;
    drop(guard);
    let text = logged.text();
    for span in [
        "create_org{org=\"traced\"}",
        "create_api_key{org=\"traced\"",
        "DEBUG authenticate: ",
        "list_request_logs{org=\"traced\" sort=CreatedAt dir=Desc limit=7}",
        "insert_request_logs{batches=1 records=2}",
    ] {
        assert!(text.contains(span), "{span:?} is traced:\n{text}");
    }
    assert!(
        text.lines()
            .filter(|l| l.contains("create_org"))
            .all(|l| l.contains("DEBUG")),
        "at debug level:\n{text}"
    );
    let hash = secret.hash();
    let hex: String = hash.0.iter().map(|b| format!("{b:02x}")).collect();
    for secret_text in [secret.expose(), &hex, &format!("{:?}", hash.0)] {
        assert!(
            !text.contains(secret_text),
            "no span records the secret or its hash:\n{text}"
        );
    }
}

/// A log writer that keeps what is written, for [`assert_calls_are_traced`].
#[derive(Debug, Clone, Default)]
struct CapturedLog(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl CapturedLog {
    fn text(&self) -> String {
        let bytes = self.0.lock().unwrap_or_else(|e| e.into_inner());
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

impl std::io::Write for CapturedLog {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for CapturedLog {
    type Writer = Self;

    fn make_writer(&'a self) -> Self {
        self.clone()
    }
}

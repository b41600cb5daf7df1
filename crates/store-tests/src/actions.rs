//! Stories: actions (SPEC §7 and the actions dialect, §3.3): signing credentials, webhook
//! destinations, versioned definitions whose names stay unique, records listed and searched
//! exactly as the reference model ([`ActionFilter::matches`]) says, compare-and-set
//! transitions, leasing of due records, timed-out acknowledgements, and isolation between
//! orgs.

use std::cell::Cell;
use std::cmp::Reverse;
use std::collections::{BTreeSet, HashMap, HashSet};

use apitrail_model::{
    ActionDefinition, ActionEvent, ActionFilter, ActionRecord, ActionSearch, ActionState,
    ActionStatus, AuditAfter, AuditEntry, AuditFilter, Credential, DefinitionDestination,
    Destination, Tags, Tenant, Timestamp, WebhookConfig, WebhookSecret, new_record_id,
};
use apitrail_store::{Expected, Leased, Store, StoreError};
use fastrand::Rng;
use uuid::Uuid;

use crate::audit::newest_first;
use crate::support::{at, audit_entry, create_record, join_all, new_org, pending, random_id};

// ---------------------------------------------------------------------------------------------
// Fixtures

/// Tags (or headers) from pairs.
fn tags(pairs: &[(&str, &str)]) -> Tags {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn credential(label: &str, secret: Vec<u8>, created_at: Timestamp) -> Credential {
    Credential {
        id: new_record_id(),
        label: label.into(),
        secret: WebhookSecret::from_bytes(secret),
        created_at,
    }
}

fn definition(
    variant: &str,
    alias: &[&str],
    schema: &str,
    created_at: Timestamp,
) -> ActionDefinition {
    ActionDefinition {
        id: new_record_id(),
        variant: variant.into(),
        version: 1,
        alias: alias.iter().map(|a| (*a).to_owned()).collect(),
        schema: schema.into(),
        destinations: vec![
            DefinitionDestination {
                id: new_record_id(),
                destination_id: new_record_id(),
                is_default: false,
            },
            DefinitionDestination {
                id: new_record_id(),
                destination_id: new_record_id(),
                is_default: true,
            },
        ],
        created_at,
        updated_at: created_at,
        deleted_at: None,
    }
}

/// `record` moved to `status` at `when`, and the event recording the move.
fn moved(
    record: &ActionRecord,
    status: ActionStatus,
    when: Timestamp,
    kind: &str,
) -> (ActionRecord, ActionEvent) {
    let mut next = record.clone();
    let s = &mut next.state;
    s.status = status;
    s.updated_at = when;
    match status {
        ActionStatus::Pending => {
            s.available_at = when.add_millis(5_000);
            s.timeout_at = None;
        }
        ActionStatus::Acknowledged => {
            s.timeout_at = Some(when.add_millis(i64::from(record.timeout_secs) * 1_000));
        }
        _ => {
            s.timeout_at = None;
            s.completed_at = Some(when);
        }
    }
    if matches!(status, ActionStatus::Failed | ActionStatus::TimedOut) {
        s.error_message = Some(format!("{kind}: the receiver answered 503 ✗"));
    }
    let mut event = ActionEvent::of(
        &next,
        kind,
        Some(format!("{kind} at attempt {}", next.state.attempt)),
    );
    if status == ActionStatus::Succeeded {
        event.data = Some(r#"{ "receipt": "r_1", "ok": true }"#.into());
    }
    (next, event)
}

/// What a transition from `record`'s current state expects.
fn expecting(record: &ActionRecord, lease_owner: Option<&str>) -> Expected {
    Expected {
        status: record.state.status,
        attempt: record.state.attempt,
        lease_owner: lease_owner.map(str::to_owned),
    }
}

/// What a lease at `now` makes of `record`, by the model's rule (`transition::lease`) every
/// backend's lease statement must agree with: its attempt counted, its first start recorded.
fn leased_at(record: &ActionRecord, now: Timestamp) -> ActionRecord {
    let mut r = record.clone();
    r.state = apitrail_model::transition::lease(&record.state, now)
        .unwrap_or_else(|e| panic!("the model does not lease record {}: {e}", record.id));
    r
}

/// The dialect's order: newest first, ties by id (descending).
fn newest_records_first(records: &mut [ActionRecord]) {
    records.sort_by_key(|r| Reverse((r.created_at, r.id)));
}

async fn events_of(store: &dyn Store, tenant: &Tenant, id: Uuid) -> Vec<ActionEvent> {
    store
        .action_events(tenant, &[id])
        .await
        .unwrap_or_else(|e| panic!("action_events({id}) failed: {e:?}"))
}

async fn get_record(store: &dyn Store, tenant: &Tenant, id: Uuid) -> Option<ActionRecord> {
    store
        .get_action_record(tenant, id)
        .await
        .unwrap_or_else(|e| panic!("get_action_record({id}) failed: {e:?}"))
}

// ---------------------------------------------------------------------------------------------
// Audit

/// The org's whole audit log, newest first, read page by page.
async fn audit_log(store: &dyn Store, tenant: &Tenant) -> Vec<AuditEntry> {
    let mut entries: Vec<AuditEntry> = Vec::new();
    loop {
        let after = entries.last().map(|e| AuditAfter {
            created_at: e.created_at,
            id: e.id,
        });
        let page = store
            .list_audit_entries(tenant, &AuditFilter::default(), after, 100)
            .await
            .expect("list_audit_entries");
        entries.extend(page.items);
        if !page.has_more {
            return entries;
        }
    }
}

/// Asserts that the org's audit log holds exactly `written`, and that its chain verifies.
async fn assert_audited(store: &dyn Store, tenant: &Tenant, written: &[AuditEntry], ctx: &str) {
    let mut want = written.to_vec();
    newest_first(&mut want);
    assert_eq!(
        audit_log(store, tenant).await,
        want,
        "{ctx}: the audit log holds one entry per mutation made, and none for a refused one"
    );
    let report = store
        .verify_audit_chain(tenant)
        .await
        .expect("verify_audit_chain");
    assert!(report.ok, "{ctx}: {report:?}");
    assert_eq!(
        report.entries_checked,
        written.len() as u64,
        "{ctx}: every entry is chained"
    );
}

// ---------------------------------------------------------------------------------------------
// Story 1: credentials and destinations

/// Credentials and destinations come back with every field as written (secret bytes, header
/// and tag maps, optional fields, the SSRF decision: allowed, refused or none recorded), listed
/// oldest first (ties by id); a destination is replaced
/// in place and soft-deleted (then listed only with `include_deleted`, still readable); every
/// mutation writes its audit entry in the org's chain, and a refused one writes none.
pub async fn action_credentials_and_destinations_round_trip(store: &dyn Store) {
    let a = new_org(store, "act-dest-a").await;
    let mut written = audit_log(store, &a).await;
    assert_eq!(written.len(), 1, "org creation wrote one entry");

    // Secrets with every byte value (NUL included); two credentials made at the same instant.
    let mut credentials = vec![
        credential("primary ✓", (0..=255).collect(), at(300)),
        credential("rotated", vec![0, 0, 0xff, 0x7f, b'"', b'\\'], at(100)),
        credential(
            "Ünïcødé label",
            WebhookSecret::generate().as_bytes().to_vec(),
            at(100),
        ),
    ];
    for c in &credentials {
        let audit = audit_entry("create", "credential", &c.id.to_string(), c.created_at);
        store
            .create_credential(&a, c, &audit)
            .await
            .unwrap_or_else(|e| panic!("create_credential({}) failed: {e:?}", c.id));
        written.push(audit);
    }
    // A credential with a taken id is refused and leaves the stored one (and the log) alone.
    let clash = Credential {
        label: "clash".into(),
        secret: WebhookSecret::from_bytes(vec![1, 2, 3]),
        ..credentials[0].clone()
    };
    let audit = audit_entry("create", "credential", &clash.id.to_string(), at(400));
    assert!(
        store.create_credential(&a, &clash, &audit).await.is_err(),
        "a second credential with id {} was stored",
        clash.id
    );
    for c in &credentials {
        assert_eq!(
            store
                .get_credential(&a, c.id)
                .await
                .expect("get_credential"),
            Some(c.clone()),
            "credential {} round-trips",
            c.id
        );
    }
    assert_eq!(
        store
            .get_credential(&a, new_record_id())
            .await
            .expect("get_credential"),
        None
    );
    credentials.sort_by_key(|c| (c.created_at, c.id));
    assert_eq!(
        store.list_credentials(&a).await.expect("list_credentials"),
        credentials,
        "credentials, oldest first"
    );

    let mut destinations = vec![
        Destination {
            id: new_record_id(),
            label: "orders hook ✓".into(),
            config: WebhookConfig {
                url: "https://hooks.example.com/orders?v=1&q=%C3%BC#frag".into(),
                headers: tags(&[
                    ("Authorization", "Bearer tok_123"),
                    ("X-Trace-Id", "ünï \"quoted\" \\ ✓"),
                    ("x-empty", ""),
                ]),
                signaling: true,
                response_time_sla_ms: u32::MAX,
            },
            credential_id: Some(credentials[0].id),
            tags: tags(&[("team", "payments"), ("env", "prod"), ("a.b", "dotted key")]),
            allow_private: Some(true),
            created_at: at(200),
            updated_at: at(250),
            deleted_at: None,
        },
        Destination {
            id: new_record_id(),
            label: "bare".into(),
            config: WebhookConfig {
                url: "http://203.0.113.7:8080/hook".into(),
                headers: Tags::new(),
                signaling: false,
                response_time_sla_ms: 0,
            },
            credential_id: None,
            tags: Tags::new(),
            // Stored before the SSRF decision was recorded.
            allow_private: None,
            created_at: at(100),
            updated_at: at(100),
            deleted_at: None,
        },
        Destination {
            id: new_record_id(),
            label: "same instant".into(),
            config: WebhookConfig {
                url: "https://[2001:db8::7]/h".into(),
                headers: tags(&[("X-One", "1")]),
                signaling: false,
                response_time_sla_ms: 1_500,
            },
            credential_id: Some(credentials[1].id),
            tags: tags(&[("team", "growth")]),
            allow_private: Some(false),
            created_at: at(100),
            updated_at: at(100),
            deleted_at: None,
        },
    ];
    for d in &destinations {
        let audit = audit_entry("create", "destination", &d.id.to_string(), d.created_at);
        store
            .put_destination(&a, d, true, &audit)
            .await
            .unwrap_or_else(|e| panic!("put_destination({}) failed: {e:?}", d.id));
        written.push(audit);
    }
    let clash = Destination {
        label: "clash".into(),
        ..destinations[1].clone()
    };
    let audit = audit_entry("create", "destination", &clash.id.to_string(), at(400));
    assert!(
        store
            .put_destination(&a, &clash, true, &audit)
            .await
            .is_err(),
        "a second destination with id {} was created",
        clash.id
    );

    // A replacement changes every field but the id and the creation time.
    destinations[0] = Destination {
        label: "orders hook, renamed".into(),
        config: WebhookConfig {
            url: "https://hooks2.example.com/orders".into(),
            headers: tags(&[("Authorization", "Bearer tok_456"), ("X-New", "new")]),
            signaling: false,
            response_time_sla_ms: 2_000,
        },
        credential_id: None,
        tags: tags(&[("team", "billing")]),
        allow_private: Some(false),
        updated_at: at(600),
        ..destinations[0].clone()
    };
    // A soft delete.
    destinations[1].deleted_at = Some(at(700));
    destinations[1].updated_at = at(700);
    for (d, action) in [(&destinations[0], "update"), (&destinations[1], "delete")] {
        let audit = audit_entry(action, "destination", &d.id.to_string(), d.updated_at);
        store
            .put_destination(&a, d, false, &audit)
            .await
            .unwrap_or_else(|e| panic!("put_destination({}) failed: {e:?}", d.id));
        written.push(audit);
    }

    for d in &destinations {
        assert_eq!(
            store
                .get_destination(&a, d.id)
                .await
                .expect("get_destination"),
            Some(d.clone()),
            "destination {} round-trips (deleted or not)",
            d.id
        );
    }
    assert_eq!(
        store
            .get_destination(&a, new_record_id())
            .await
            .expect("get_destination"),
        None
    );
    destinations.sort_by_key(|d| (d.created_at, d.id));
    let live: Vec<Destination> = destinations
        .iter()
        .filter(|d| d.deleted_at.is_none())
        .cloned()
        .collect();
    assert_eq!(
        store
            .list_destinations(&a, false)
            .await
            .expect("list_destinations"),
        live,
        "live destinations, oldest first"
    );
    assert_eq!(
        store
            .list_destinations(&a, true)
            .await
            .expect("list_destinations"),
        destinations,
        "every destination with include_deleted"
    );
    assert_audited(store, &a, &written, "credentials and destinations").await;
}

// ---------------------------------------------------------------------------------------------
// Story 2: definitions

/// The reference model of one org's definitions: every version written, by definition.
#[derive(Debug, Default)]
struct Definitions {
    versions: HashMap<Uuid, Vec<ActionDefinition>>,
    /// Every name ever tried, to look each one up.
    names: BTreeSet<String>,
}

impl Definitions {
    fn latest(&self, id: Uuid) -> Option<&ActionDefinition> {
        self.versions.get(&id)?.iter().max_by_key(|d| d.version)
    }

    /// The live definition answering to `name` (its latest version).
    fn owner(&self, name: &str) -> Option<&ActionDefinition> {
        self.versions
            .keys()
            .filter_map(|id| self.latest(*id))
            .find(|d| d.deleted_at.is_none() && d.names().any(|n| n == name))
    }

    /// Whether writing `d` would take a name another live definition has.
    fn conflicts(&self, d: &ActionDefinition) -> bool {
        d.deleted_at.is_none()
            && d.names()
                .any(|n| self.owner(n).is_some_and(|o| o.id != d.id))
    }

    fn apply(&mut self, d: &ActionDefinition, new_version: bool) {
        let versions = self.versions.entry(d.id).or_default();
        if new_version {
            versions.push(d.clone());
        } else {
            let v = versions
                .iter_mut()
                .find(|v| v.version == d.version)
                .expect("the model replaces an existing version");
            *v = d.clone();
        }
        if let Some(deleted) = d.deleted_at {
            for v in versions.iter_mut() {
                v.deleted_at.get_or_insert(deleted);
            }
        }
    }

    /// What `list_action_definitions` must return: each definition's latest version, in the
    /// order the definitions were first created (ties by id).
    fn listed(&self, include_deleted: bool) -> Vec<ActionDefinition> {
        let mut out: Vec<(Timestamp, ActionDefinition)> = self
            .versions
            .iter()
            .filter_map(|(id, vs)| {
                let latest = self.latest(*id)?;
                let first = vs.iter().map(|v| v.created_at).min()?;
                (include_deleted || latest.deleted_at.is_none()).then(|| (first, latest.clone()))
            })
            .collect();
        out.sort_by_key(|(first, d)| (*first, d.id));
        out.into_iter().map(|(_, d)| d).collect()
    }
}

/// Writes `d`; on success the model and the expected audit log follow.
async fn put_definition(
    store: &dyn Store,
    tenant: &Tenant,
    model: &mut Definitions,
    written: &mut Vec<AuditEntry>,
    d: &ActionDefinition,
    new_version: bool,
) -> Result<(), StoreError> {
    model.names.extend(d.names().map(str::to_owned));
    let action = match (d.deleted_at, new_version) {
        (Some(_), _) => "delete",
        (None, true) => "create",
        (None, false) => "update",
    };
    let audit = audit_entry(action, "action_definition", &d.id.to_string(), d.updated_at);
    store
        .put_action_definition(tenant, d, new_version, &audit)
        .await?;
    model.apply(d, new_version);
    written.push(audit);
    Ok(())
}

/// Writes `d`, which the model says must succeed or be refused for its names.
async fn put_checked(
    store: &dyn Store,
    tenant: &Tenant,
    model: &mut Definitions,
    written: &mut Vec<AuditEntry>,
    d: &ActionDefinition,
    new_version: bool,
) {
    let conflict = model.conflicts(d);
    let result = put_definition(store, tenant, model, written, d, new_version).await;
    match (conflict, result) {
        (false, Ok(())) | (true, Err(StoreError::Conflict(_))) => {}
        (false, Err(e)) => panic!("writing {} v{} failed: {e:?}", d.variant, d.version),
        (true, r) => panic!(
            "writing {} v{} {:?} over names another live definition has: {r:?}, expected Conflict",
            d.variant, d.version, d.alias
        ),
    }
}

/// Everything the store says about the org's definitions agrees with the model: every
/// version, the latest, both lists, and the owner of every name ever used.
async fn assert_definitions(store: &dyn Store, tenant: &Tenant, model: &Definitions, ctx: &str) {
    for (id, versions) in &model.versions {
        for v in versions {
            assert_eq!(
                store
                    .get_action_definition(tenant, *id, Some(v.version))
                    .await
                    .expect("get_action_definition"),
                Some(v.clone()),
                "{ctx}: {} version {}",
                v.variant,
                v.version
            );
        }
        let latest = model.latest(*id).cloned();
        assert_eq!(
            store
                .get_action_definition(tenant, *id, None)
                .await
                .expect("get_action_definition"),
            latest,
            "{ctx}: the latest version of {id}"
        );
        let next = latest.map_or(1, |l| l.version + 1);
        assert_eq!(
            store
                .get_action_definition(tenant, *id, Some(next))
                .await
                .expect("get_action_definition"),
            None,
            "{ctx}: version {next} of {id} was never written"
        );
    }
    for include_deleted in [false, true] {
        assert_eq!(
            store
                .list_action_definitions(tenant, include_deleted)
                .await
                .expect("list_action_definitions"),
            model.listed(include_deleted),
            "{ctx}: list_action_definitions(include_deleted: {include_deleted})"
        );
    }
    for name in &model.names {
        assert_eq!(
            store
                .find_action_definition(tenant, name)
                .await
                .expect("find_action_definition"),
            model.owner(name).cloned(),
            "{ctx}: the definition named {name:?}"
        );
    }
}

/// Definitions are versioned (old versions stay readable, `None` reads the latest), replaced
/// in place, and deleted (every version marked); variants and aliases are unique among live
/// definitions: a write taking another's name is refused with `Conflict` and writes nothing
/// (not even part of its names), concurrent claims of one name let exactly one through, and
/// deleting or renaming frees names for others. Lookups by variant and by alias, and both
/// lists, agree with the model after every step; every accepted write is audited.
pub async fn action_definitions_are_versioned_with_unique_names(store: &dyn Store) {
    let a = new_org(store, "act-def-a").await;
    let mut written = audit_log(store, &a).await;
    let mut model = Definitions::default();
    model.names.insert("never_used".into());

    let schema_v1 = r#"{ "type": "object",
  "properties": { "to": { "type": "string", "description": "Zoë ✓" } } }"#;
    let schema_v2 = r#"{"type":"object","required":["to"],"properties":{"to":{"type":"string"},"cc":{"type":"array"}}}"#;

    // Version 1, then version 2 with a new schema and changed aliases.
    let email_v1 = definition("send_email", &["email", "mail.send"], schema_v1, at(0));
    put_checked(store, &a, &mut model, &mut written, &email_v1, true).await;
    assert_definitions(store, &a, &model, "one definition").await;
    let email_v2 = ActionDefinition {
        version: 2,
        alias: vec!["email".into(), "notify".into()],
        schema: schema_v2.into(),
        created_at: at(2_000),
        updated_at: at(2_000),
        ..email_v1.clone()
    };
    put_checked(store, &a, &mut model, &mut written, &email_v2, true).await;
    assert_definitions(store, &a, &model, "version 2").await;
    assert_eq!(
        store
            .get_action_definition(&a, email_v1.id, Some(1))
            .await
            .expect("get")
            .map(|d| d.schema),
        Some(schema_v1.to_owned()),
        "version 1 keeps its schema"
    );

    // Created between the two versions of the first: the list orders definitions by their
    // first version. No aliases, no destinations.
    let mut charge = definition("charge", &[], "{}", at(1_000));
    charge.destinations.clear();
    put_checked(store, &a, &mut model, &mut written, &charge, true).await;
    assert_definitions(store, &a, &model, "two definitions").await;

    // Writing a version that exists as a new one is refused.
    let again = ActionDefinition {
        schema: "{\"changed\":true}".into(),
        ..email_v2.clone()
    };
    let result = put_definition(store, &a, &mut model, &mut written, &again, true).await;
    assert!(
        matches!(result, Err(StoreError::Conflict(_))),
        "version 2 written twice: {result:?}"
    );
    assert_definitions(store, &a, &model, "a version written twice").await;

    // In-place replacement of the only version: new aliases and destinations.
    let charge_v1b = ActionDefinition {
        alias: vec!["bill".into(), "payment".into()],
        destinations: vec![DefinitionDestination {
            id: new_record_id(),
            destination_id: new_record_id(),
            is_default: true,
        }],
        updated_at: at(2_500),
        ..charge.clone()
    };
    put_checked(store, &a, &mut model, &mut written, &charge_v1b, false).await;
    assert_definitions(store, &a, &model, "replaced in place").await;

    // Claims of names another live definition has: a variant that is an alias, an alias that
    // is a variant (after a free one), a replacement and a new version taking another's alias.
    let refused = [
        (definition("bill", &[], "{}", at(3_000)), true),
        (
            definition("fresh", &["x1", "send_email"], "{}", at(3_000)),
            true,
        ),
        (
            ActionDefinition {
                alias: vec!["bill".into(), "email".into()],
                updated_at: at(3_000),
                ..charge_v1b.clone()
            },
            false,
        ),
        (
            ActionDefinition {
                version: 2,
                variant: "notify".into(),
                created_at: at(3_000),
                updated_at: at(3_000),
                ..charge_v1b.clone()
            },
            true,
        ),
    ];
    for (d, new_version) in &refused {
        assert!(model.conflicts(d), "fixture: {} must conflict", d.variant);
        put_checked(store, &a, &mut model, &mut written, d, *new_version).await;
        assert_definitions(store, &a, &model, &format!("refused {}", d.variant)).await;
    }

    // Names that a refused write tried to take, and one that version 2 dropped, are free.
    let taker = definition("fresh", &["x1", "mail.send"], schema_v1, at(3_500));
    assert!(!model.conflicts(&taker), "fixture: the names are free");
    put_checked(store, &a, &mut model, &mut written, &taker, true).await;
    assert_definitions(store, &a, &model, "freed names taken").await;

    // Racing claims of one name: exactly one wins.
    let racers: Vec<ActionDefinition> = (0..6)
        .map(|i| {
            definition(
                "race",
                &[format!("race_alias_{i}").as_str()],
                "{}",
                at(4_000),
            )
        })
        .collect();
    let audits: Vec<AuditEntry> = racers
        .iter()
        .map(|d| audit_entry("create", "action_definition", &d.id.to_string(), at(4_000)))
        .collect();
    let results = join_all(
        racers
            .iter()
            .zip(&audits)
            .map(|(d, audit)| store.put_action_definition(&a, d, true, audit)),
    )
    .await;
    let mut winners = 0;
    for ((d, audit), result) in racers.iter().zip(&audits).zip(results) {
        model.names.extend(d.names().map(str::to_owned));
        match result {
            Ok(()) => {
                winners += 1;
                model.apply(d, true);
                written.push(audit.clone());
            }
            Err(StoreError::Conflict(_)) => {}
            Err(e) => panic!("racing claim of \"race\" failed: {e:?}"),
        }
    }
    assert_eq!(winners, 1, "one of the racing claims of \"race\" wins");
    assert_definitions(store, &a, &model, "racing claims").await;

    // Deleting marks every version and frees every name.
    let deleted = ActionDefinition {
        updated_at: at(5_000),
        deleted_at: Some(at(5_000)),
        ..email_v2.clone()
    };
    put_checked(store, &a, &mut model, &mut written, &deleted, false).await;
    assert_definitions(store, &a, &model, "deleted").await;
    assert_eq!(
        store
            .get_action_definition(&a, email_v1.id, Some(1))
            .await
            .expect("get")
            .and_then(|d| d.deleted_at),
        Some(at(5_000)),
        "deleting marks version 1 too"
    );
    let successor = definition("send_email", &["email", "notify"], schema_v2, at(6_000));
    assert!(!model.conflicts(&successor), "fixture: the names are free");
    put_checked(store, &a, &mut model, &mut written, &successor, true).await;
    assert_definitions(store, &a, &model, "names of a deleted definition reused").await;

    assert_audited(store, &a, &written, "definitions").await;
}

// ---------------------------------------------------------------------------------------------
// Story 3: records, the dialect's lists and searches

/// The definitions records are made of: (definition, variant). The last pair keeps the first
/// definition's id under another variant (a renamed definition), so that filters by id and by
/// variant differ.
fn record_kinds() -> Vec<(Uuid, &'static str)> {
    let (email, charge, notify) = (new_record_id(), new_record_id(), new_record_id());
    vec![
        (email, "send_email"),
        (charge, "charge.card"),
        (notify, "notify:v2"),
        (email, "send_email_old"),
    ]
}

/// JSON values of `input.to`: strings (one written with an escape), numbers, null.
const TO_VALUES: [&str; 10] = [
    r#""ann@example.com""#,
    r#""bob@example.com""#,
    r#""caf\u00e9""#,
    r#""café""#,
    r#""1.5""#,
    r#""true""#,
    r#""""#,
    "7",
    "null",
    r#""Ann@Example.com""#,
];
/// JSON values of `input.amount`: one number in many spellings, integers beyond f64's
/// exact range, and values of other types.
const AMOUNT_VALUES: [&str; 20] = [
    "1.5",
    "1.50",
    "15e-1",
    "0.15E1",
    "2",
    "2.0",
    "-0",
    "0",
    "-3.25",
    "9007199254740993",
    "9007199254740992",
    "1e21",
    "1000000000000000000000",
    "-9223372036854775808",
    r#""1.5""#,
    "true",
    "null",
    "[1.5]",
    r#"{"v":1.5}"#,
    "0.1",
];
/// JSON values of `input.flag`.
const FLAG_VALUES: [&str; 6] = ["true", "false", r#""true""#, "1", "0", "null"];
/// JSON values of `input.nested`.
const NESTED_VALUES: [&str; 8] = [
    r#"{"deep":{"k":"v1"}}"#,
    r#"{"deep":{"k":"v2","other":1}}"#,
    r#"{"deep":{"k":1.5}}"#,
    r#"{"deep":{"k":true}}"#,
    r#"{"deep":"flat"}"#,
    r#"{"deep":[{"k":"v1"}]}"#,
    r#"{"deep":{}}"#,
    "{}",
];
/// Inputs that are no objects.
const ROOT_INPUTS: [&str; 6] = ["[1,2,3]", r#""just text""#, "42", "null", "{}", "true"];

fn pick<'a>(rng: &mut Rng, values: &[&'a str]) -> &'a str {
    values[rng.usize(..values.len())]
}

/// A record input as a client may send it: fields in any order, any spacing, often absent.
fn random_input(rng: &mut Rng) -> String {
    if rng.u8(..12) == 0 {
        return pick(rng, &ROOT_INPUTS).to_owned();
    }
    let mut fields = Vec::new();
    let mut maybe = |rng: &mut Rng, field: String| {
        if rng.u8(..4) > 0 {
            fields.push(field);
        }
    };
    let to = pick(rng, &TO_VALUES);
    maybe(rng, format!(r#""to":{to}"#));
    let amount = pick(rng, &AMOUNT_VALUES);
    maybe(rng, format!(r#""amount": {amount}"#));
    let flag = pick(rng, &FLAG_VALUES);
    maybe(rng, format!(r#""flag":{flag}"#));
    let nested = pick(rng, &NESTED_VALUES);
    maybe(rng, format!(r#""nested":{nested}"#));
    maybe(rng, r#""ünï cødé":"x""#.to_owned());
    maybe(rng, r#""a.b":"dotted""#.to_owned());
    maybe(rng, r#""a":{"b":"nested-ab"}"#.to_owned());
    maybe(rng, r#""nul":null"#.to_owned());
    rng.shuffle(&mut fields);
    let sep = if rng.bool() { "," } else { " ,\n  " };
    format!("{{{}}}", fields.join(sep))
}

const TAG_TEAMS: [&str; 4] = ["payments", "growth", "ünï", ""];

fn random_record(rng: &mut Rng, kinds: &[(Uuid, &str)], destinations: &[Uuid]) -> ActionRecord {
    let (definition_id, variant) = kinds[rng.usize(..kinds.len())];
    // Few instants, so that many records share one and the id decides their order.
    let created_at = at(rng.i64(0..30) * 1_000);
    let status = ActionStatus::ALL[rng.usize(..ActionStatus::ALL.len())];
    let attempt = if status == ActionStatus::Pending {
        rng.u32(0..3)
    } else {
        rng.u32(1..6)
    };
    let mut tags = Tags::new();
    if rng.u8(..4) > 0 {
        tags.insert("team".into(), pick(rng, &TAG_TEAMS).into());
    }
    if rng.bool() {
        tags.insert(
            "env".into(),
            if rng.bool() { "prod" } else { "staging" }.into(),
        );
    }
    if rng.u8(..8) == 0 {
        tags.insert("a.b".into(), "dotted".into());
    }
    let timeout_secs = match rng.u8(..10) {
        0 => u32::MAX,
        1 => 0,
        _ => rng.u32(1..3_600),
    };
    ActionRecord {
        id: random_id(rng),
        definition_id,
        version: rng.u32(1..4),
        variant: variant.into(),
        input: random_input(rng),
        timeout_secs,
        tags,
        destination_id: destinations[rng.usize(..destinations.len())],
        request_id: rng.bool().then(|| format!("req_{}", rng.u16(..))),
        created_at,
        state: ActionState {
            status,
            attempt,
            updated_at: created_at.add_millis(rng.i64(0..5_000)),
            available_at: created_at.add_millis(rng.i64(-1_000..60_000)),
            timeout_at: (status == ActionStatus::Acknowledged || rng.u8(..4) == 0)
                .then(|| created_at.add_millis(rng.i64(0..600_000))),
            started_at: (attempt > 0).then(|| created_at.add_millis(rng.i64(0..1_000))),
            completed_at: status
                .is_final()
                .then(|| created_at.add_millis(rng.i64(1_000..9_000))),
            error_message: matches!(status, ActionStatus::Failed | ActionStatus::TimedOut)
                .then(|| "the receiver answered 500: «nope»".into()),
        },
    }
}

/// Every filter the dialect can express over the fixtures: each field alone, some together,
/// and values that match nothing.
fn record_filters(kinds: &[(Uuid, &str)], records: &[ActionRecord]) -> Vec<ActionFilter> {
    let mut filters = vec![ActionFilter::default()];
    let mut definition_ids: Vec<Option<Uuid>> = kinds.iter().map(|(id, _)| Some(*id)).collect();
    definition_ids.dedup();
    definition_ids.extend([None, Some(new_record_id())]);
    let mut variants: Vec<String> = kinds.iter().map(|(_, v)| (*v).to_owned()).collect();
    variants.extend(["unknown".to_owned(), "SEND_EMAIL".to_owned()]);
    for d in &definition_ids {
        filters.push(ActionFilter {
            definition_id: Some(*d),
            ..ActionFilter::default()
        });
    }
    for v in &variants {
        filters.push(ActionFilter {
            variant: Some(v.clone()),
            ..ActionFilter::default()
        });
    }
    for v in [1, 2, 3, 0, 99] {
        filters.push(ActionFilter {
            version: Some(v),
            ..ActionFilter::default()
        });
    }

    let mut searches: Vec<ActionSearch> = Vec::new();
    for r in records.iter().step_by(37) {
        searches.push(ActionSearch::Id(Some(r.id)));
    }
    searches.extend([
        ActionSearch::Id(None),
        ActionSearch::Id(Some(new_record_id())),
    ]);
    searches.extend(
        definition_ids
            .iter()
            .map(|d| ActionSearch::DefinitionId(*d)),
    );
    searches.extend(variants.iter().map(|v| ActionSearch::Variant(v.clone())));
    searches.extend(ActionStatus::ALL.map(|s| ActionSearch::Status(Some(s))));
    searches.push(ActionSearch::Status(None));
    for (k, v) in [
        ("team", "payments"),
        ("team", "ünï"),
        ("team", ""),
        ("team", "PAYMENTS"),
        ("env", "prod"),
        ("env", "staging"),
        ("a.b", "dotted"),
        ("missing", ""),
        ("missing", "x"),
    ] {
        searches.push(ActionSearch::Tag(k.into(), v.into()));
    }
    let inputs: [(&[&str], &[&str]); 14] = [
        (
            &["to"],
            &[
                "ann@example.com",
                "café",
                "1.5",
                "1.50",
                "true",
                "",
                "7",
                "7.0",
                "null",
                "nobody",
            ],
        ),
        (
            &["amount"],
            &[
                "1.5",
                "1.50",
                "15e-1",
                "2",
                "2.0",
                "0",
                "-0",
                "-3.25",
                "9007199254740993",
                "9007199254740992",
                "1e21",
                "-9223372036854775808",
                "0.1",
                "true",
                "abc",
                "NaN",
                "inf",
                "+1.5",
                " 1.5",
            ],
        ),
        (&["flag"], &["true", "false", "1", "0", "TRUE", "null"]),
        (&["nested", "deep", "k"], &["v1", "v2", "1.5", "true"]),
        (&["nested", "deep"], &["flat", "v1"]),
        (&["nested"], &["v1", "{}"]),
        (&["nested", "deep", "other"], &["1"]),
        (&["ünï cødé"], &["x"]),
        (&["a.b"], &["dotted", "nested-ab"]),
        (&["a", "b"], &["nested-ab", "dotted"]),
        (&["missing"], &["x", ""]),
        (&["to", "deeper"], &["ann@example.com"]),
        (&["nul"], &["null", ""]),
        (&[], &["42", "just text", "true"]),
    ];
    for (path, values) in inputs {
        for v in values {
            searches.push(ActionSearch::Input(
                path.iter().map(|k| (*k).to_owned()).collect(),
                (*v).to_owned(),
            ));
        }
    }
    for s in &searches {
        filters.push(ActionFilter {
            search: Some(s.clone()),
            ..ActionFilter::default()
        });
    }

    // Combinations (AND).
    let (first, _) = kinds[0];
    filters.extend([
        ActionFilter {
            definition_id: Some(Some(first)),
            version: Some(2),
            ..ActionFilter::default()
        },
        ActionFilter {
            definition_id: Some(Some(first)),
            variant: Some("send_email_old".into()),
            search: Some(ActionSearch::Status(Some(ActionStatus::Pending))),
            ..ActionFilter::default()
        },
        ActionFilter {
            variant: Some("charge.card".into()),
            version: Some(1),
            search: Some(ActionSearch::Tag("team".into(), "payments".into())),
            ..ActionFilter::default()
        },
        ActionFilter {
            version: Some(3),
            search: Some(ActionSearch::Input(vec!["amount".into()], "1.5".into())),
            ..ActionFilter::default()
        },
        ActionFilter {
            definition_id: Some(None),
            version: Some(1),
            ..ActionFilter::default()
        },
        ActionFilter {
            variant: Some("notify:v2".into()),
            search: Some(ActionSearch::DefinitionId(Some(first))),
            ..ActionFilter::default()
        },
    ]);
    filters
}

/// Asserts that `got` is `want`, reporting the first differing position.
fn assert_same_records(got: &[ActionRecord], want: &[&ActionRecord], ctx: &str) {
    let (g, w): (Vec<Uuid>, Vec<Uuid>) = (
        got.iter().map(|r| r.id).collect(),
        want.iter().map(|r| r.id).collect(),
    );
    if g != w {
        let i = g.iter().zip(&w).take_while(|(x, y)| x == y).count();
        panic!(
            "{ctx}: got {} records, expected {}; first difference at index {i}: got {:?}, expected {:?}",
            g.len(),
            w.len(),
            got.get(i)
                .map(|r| (r.id, r.created_at, &r.variant, &r.input)),
            want.get(i)
                .map(|r| (r.id, r.created_at, &r.variant, &r.input)),
        );
    }
    for (g, w) in got.iter().zip(want) {
        assert_eq!(g, *w, "{ctx}: record {} round-trips", w.id);
    }
}

/// Every page and count of `filter` agrees with the model over `newest_first` (the org's
/// records in the dialect's order).
async fn assert_filter(
    store: &dyn Store,
    tenant: &Tenant,
    newest_first: &[ActionRecord],
    filter: &ActionFilter,
) {
    let want: Vec<&ActionRecord> = newest_first.iter().filter(|r| filter.matches(r)).collect();
    let n = want.len();
    assert_eq!(
        store
            .count_action_records(tenant, filter)
            .await
            .unwrap_or_else(|e| panic!("count_action_records({filter:?}) failed: {e:?}")),
        n as u64,
        "count_action_records({filter:?})"
    );
    let mut slices: Vec<(usize, u32)> = (0..n.max(1)).step_by(50).map(|s| (s, 50)).collect();
    slices.extend([
        (0, 1),
        (3, 7),
        (n.saturating_sub(2), 5),
        (n, 5),
        (n + 10, 20),
    ]);
    for (skip, take) in slices {
        let (items, total) = store
            .list_action_records(tenant, filter, skip as u64, take)
            .await
            .unwrap_or_else(|e| panic!("list_action_records({filter:?}) failed: {e:?}"));
        assert_eq!(
            total, n as u64,
            "list_action_records({filter:?}) counts every match"
        );
        let page: Vec<&ActionRecord> = want
            .iter()
            .skip(skip)
            .take(take as usize)
            .copied()
            .collect();
        assert_same_records(
            &items,
            &page,
            &format!("list_action_records({filter:?}, skip {skip}, take {take})"),
        );
    }
}

/// ~200 randomized records (inputs of every JSON type, many ties on `created_at`) list newest
/// first, `skip`/`take` slice exactly that order, `count` is the number of all matches, and
/// every filter and search agrees with `ActionFilter::matches`; another org's records, made of
/// the same definitions, never show up. Transitions are reflected, and `action_events` returns
/// each record's events in order of creation.
pub async fn action_records_list_and_search_like_the_reference_model(store: &dyn Store) {
    let mut rng = Rng::with_seed(0xAC71_0005);
    let a = new_org(store, "act-rec-a").await;
    let b = new_org(store, "act-rec-b").await;
    let kinds = record_kinds();
    let destinations: Vec<Uuid> = (0..3).map(|_| new_record_id()).collect();
    let mut records: Vec<ActionRecord> = (0..200)
        .map(|_| random_record(&mut rng, &kinds, &destinations))
        .collect();
    let records_b: Vec<ActionRecord> = (0..40)
        .map(|_| random_record(&mut rng, &kinds, &destinations))
        .collect();

    let mut events: HashMap<Uuid, Vec<ActionEvent>> = HashMap::new();
    for chunk in records.chunks(25) {
        let created = join_all(chunk.iter().map(|r| create_record(store, &a, r))).await;
        for event in created {
            events.entry(event.record_id).or_default().push(event);
        }
    }
    for chunk in records_b.chunks(20) {
        join_all(chunk.iter().map(|r| create_record(store, &b, r))).await;
    }
    for r in records.iter().step_by(23) {
        assert_eq!(
            get_record(store, &a, r.id).await.as_ref(),
            Some(r),
            "record {} round-trips",
            r.id
        );
    }

    // Transitions: one for every third record, a second for every sixth (some at the same
    // instant as the previous event, so the id orders them).
    for round in 0..2 {
        for i in (0..records.len()).step_by(3 * (round + 1)) {
            let r = &records[i];
            let last = events[&r.id].last().expect("a created event").created_at;
            let when = last
                .max(r.state.updated_at)
                .add_millis(rng.i64(0..2) * 1_000);
            let i_status = ActionStatus::ALL
                .iter()
                .position(|s| *s == r.state.status)
                .expect("a known status");
            let status = ActionStatus::ALL[(i_status + 1 + round) % ActionStatus::ALL.len()];
            let (next, event) = moved(r, status, when, &format!("round_{round}"));
            let done = store
                .transition_action(&a, r.id, &expecting(r, None), &next.state, &event)
                .await
                .expect("transition_action");
            assert!(done, "transition of {} from its current state", r.id);
            events.entry(r.id).or_default().push(event);
            records[i] = next;
        }
    }

    // Events: every record's own, in order, whatever order the records are asked in.
    let mut asked: Vec<Uuid> = records.iter().map(|r| r.id).collect();
    rng.shuffle(&mut asked);
    asked.push(new_record_id());
    let got = store
        .action_events(&a, &asked)
        .await
        .expect("action_events");
    assert_eq!(
        got.len(),
        events.values().map(Vec::len).sum::<usize>(),
        "every event once"
    );
    let mut by_record: HashMap<Uuid, Vec<ActionEvent>> = HashMap::new();
    for e in got {
        by_record.entry(e.record_id).or_default().push(e);
    }
    assert_eq!(
        by_record, events,
        "each record's events, in order of creation"
    );
    assert!(
        store
            .action_events(&a, &[])
            .await
            .expect("action_events")
            .is_empty()
    );
    let some: Vec<Uuid> = records.iter().step_by(5).map(|r| r.id).collect();
    for e in store.action_events(&a, &some).await.expect("action_events") {
        assert!(
            some.contains(&e.record_id),
            "an event of record {} that was not asked for",
            e.record_id
        );
    }

    // Lists, counts and searches.
    newest_records_first(&mut records);
    let mut records_b = records_b;
    newest_records_first(&mut records_b);
    let filters = record_filters(&kinds, &records);
    for filter in &filters {
        assert_filter(store, &a, &records, filter).await;
    }
    for filter in filters.iter().step_by(4) {
        assert_filter(store, &b, &records_b, filter).await;
    }
    // A page far beyond the end is empty, and still counts every match.
    assert_eq!(
        store
            .list_action_records(&a, &ActionFilter::default(), u64::MAX, 50)
            .await
            .expect("list_action_records"),
        (vec![], records.len() as u64)
    );
    // The fixtures exercise the searches: most match something, and some match nothing.
    let matching = filters
        .iter()
        .filter(|f| records.iter().any(|r| f.matches(r)))
        .count();
    assert!(
        matching * 2 > filters.len() && matching < filters.len(),
        "fixture: {matching} of {} filters match some record",
        filters.len()
    );
}

// ---------------------------------------------------------------------------------------------
// Story 4: compare-and-set transitions

/// A transition happens only from the expected state (status, attempt and, when given, the
/// lease owner): it succeeds once, appends its event and clears the lease; a stale
/// expectation returns false and changes nothing (no event either); of racing transitions
/// from one state exactly one wins.
pub async fn action_transitions_compare_and_set(store: &dyn Store) {
    let a = new_org(store, "act-cas-a").await;
    let def = new_record_id();
    let now = at(10_000);
    let r1 = pending(def, "send_email", at(0), at(0));
    let r2 = pending(def, "send_email", at(1), at(1));
    let r3 = pending(def, "send_email", at(2), at(2));
    let mut events: HashMap<Uuid, Vec<ActionEvent>> = HashMap::new();
    for r in [&r1, &r2, &r3] {
        let e = create_record(store, &a, r).await;
        events.insert(r.id, vec![e]);
    }
    let leased = store
        .lease_due_actions(now, now.add_millis(60_000), "w1", 10)
        .await
        .expect("lease");
    assert_eq!(leased.len(), 3, "the three due records are leased");
    let leased_rec = |r: &ActionRecord| leased_at(r, now);
    let (r1, r2, r3) = (leased_rec(&r1), leased_rec(&r2), leased_rec(&r3));

    /// Asserts the record and its events are as the model says.
    async fn unchanged(
        store: &dyn Store,
        tenant: &Tenant,
        r: &ActionRecord,
        events: &HashMap<Uuid, Vec<ActionEvent>>,
        ctx: &str,
    ) {
        assert_eq!(
            get_record(store, tenant, r.id).await.as_ref(),
            Some(r),
            "{ctx}: the record"
        );
        assert_eq!(
            &events_of(store, tenant, r.id).await,
            &events[&r.id],
            "{ctx}: the events"
        );
    }

    // r1: leased by w1; acknowledged under that lease.
    let (r1_ack, ev) = moved(
        &r1,
        ActionStatus::Acknowledged,
        now.add_millis(100),
        "acknowledged",
    );
    for stale in [
        Expected {
            status: ActionStatus::Acknowledged,
            ..expecting(&r1, Some("w1"))
        },
        Expected {
            attempt: 0,
            ..expecting(&r1, Some("w1"))
        },
        Expected {
            attempt: 2,
            ..expecting(&r1, None)
        },
        expecting(&r1, Some("w2")),
        expecting(&r1, Some("")),
    ] {
        let done = store
            .transition_action(&a, r1.id, &stale, &r1_ack.state, &ev)
            .await
            .expect("transition_action");
        assert!(!done, "a transition expecting {stale:?} happened");
        unchanged(store, &a, &r1, &events, &format!("after {stale:?}")).await;
    }
    let done = store
        .transition_action(&a, r1.id, &expecting(&r1, Some("w1")), &r1_ack.state, &ev)
        .await
        .expect("transition_action");
    assert!(done, "the transition from the expected state happens");
    events.get_mut(&r1.id).expect("events").push(ev.clone());
    unchanged(store, &a, &r1_ack, &events, "acknowledged").await;
    // The same transition again is stale: the record moved on.
    let (again, ev2) = moved(
        &r1,
        ActionStatus::Acknowledged,
        now.add_millis(200),
        "again",
    );
    for stale in [expecting(&r1, Some("w1")), expecting(&r1, None)] {
        let done = store
            .transition_action(&a, r1.id, &stale, &again.state, &ev2)
            .await
            .expect("transition_action");
        assert!(!done, "a transition from a state already left happened");
        unchanged(store, &a, &r1_ack, &events, "a repeated transition").await;
    }
    // The transition cleared the lease: expecting w1's lease now fails, expecting none works.
    let (r1_done, ev3) = moved(
        &r1_ack,
        ActionStatus::Succeeded,
        now.add_millis(300),
        "signaled",
    );
    let done = store
        .transition_action(
            &a,
            r1.id,
            &expecting(&r1_ack, Some("w1")),
            &r1_done.state,
            &ev3,
        )
        .await
        .expect("transition_action");
    assert!(!done, "a cleared lease still counted as w1's");
    unchanged(store, &a, &r1_ack, &events, "a cleared lease").await;
    let done = store
        .transition_action(&a, r1.id, &expecting(&r1_ack, None), &r1_done.state, &ev3)
        .await
        .expect("transition_action");
    assert!(done);
    events.get_mut(&r1.id).expect("events").push(ev3);
    unchanged(store, &a, &r1_done, &events, "succeeded").await;

    // r2: a failed attempt puts it back in the queue; its lease is gone, so it is leased
    // again at once (before w1's lease would have run out), with the next attempt.
    let (mut r2_retry, ev) = moved(
        &r2,
        ActionStatus::Pending,
        now.add_millis(100),
        "attempt_failed",
    );
    r2_retry.state.available_at = now.add_millis(150);
    let ev = ActionEvent::of(&r2_retry, "attempt_failed", ev.message);
    assert!(
        store
            .transition_action(&a, r2.id, &expecting(&r2, Some("w1")), &r2_retry.state, &ev)
            .await
            .expect("transition_action")
    );
    events.get_mut(&r2.id).expect("events").push(ev);
    unchanged(store, &a, &r2_retry, &events, "retry").await;
    let t = now.add_millis(200);
    let again = store
        .lease_due_actions(t, t.add_millis(60_000), "w2", 10)
        .await
        .expect("lease");
    let ids: Vec<Uuid> = again.iter().map(|l| l.record.id).collect();
    assert_eq!(ids, vec![r2.id], "only the record put back is leased again");
    let r2_again = leased_at(&r2_retry, t);
    assert_eq!(again[0].record, r2_again);
    assert_eq!(r2_again.state.attempt, 2);
    unchanged(store, &a, &r2_again, &events, "leased again").await;
    // w1's lease is over: its transition fails, w2's succeeds.
    let (r2_done, ev) = moved(
        &r2_again,
        ActionStatus::Succeeded,
        t.add_millis(10),
        "delivered",
    );
    for stale in [
        expecting(&r2_again, Some("w1")),
        expecting(&r2_retry, Some("w2")),
    ] {
        assert!(
            !store
                .transition_action(&a, r2.id, &stale, &r2_done.state, &ev)
                .await
                .expect("transition_action"),
            "a transition expecting {stale:?} happened"
        );
    }
    unchanged(store, &a, &r2_again, &events, "stale owners").await;
    assert!(
        store
            .transition_action(
                &a,
                r2.id,
                &expecting(&r2_again, Some("w2")),
                &r2_done.state,
                &ev
            )
            .await
            .expect("transition_action")
    );
    events.get_mut(&r2.id).expect("events").push(ev);
    unchanged(store, &a, &r2_done, &events, "delivered").await;

    // r3: eight racing transitions from the same state; exactly one happens.
    let moves: Vec<(ActionRecord, ActionEvent)> = (0..8)
        .map(|i| {
            let status = if i % 2 == 0 {
                ActionStatus::Succeeded
            } else {
                ActionStatus::Failed
            };
            moved(&r3, status, now.add_millis(500 + i), &format!("racer_{i}"))
        })
        .collect();
    let from = expecting(&r3, Some("w1"));
    let results = join_all(
        moves
            .iter()
            .map(|(next, ev)| store.transition_action(&a, r3.id, &from, &next.state, ev)),
    )
    .await;
    let winners: Vec<usize> = results
        .into_iter()
        .enumerate()
        .filter_map(|(i, r)| r.expect("transition_action").then_some(i))
        .collect();
    assert_eq!(
        winners.len(),
        1,
        "exactly one racing transition happens: {winners:?}"
    );
    let (won, ev) = &moves[winners[0]];
    events.get_mut(&r3.id).expect("events").push(ev.clone());
    unchanged(store, &a, won, &events, "after the race").await;

    // Unknown records transition nowhere.
    assert!(
        !store
            .transition_action(&a, new_record_id(), &expecting(&r3, None), &won.state, ev)
            .await
            .expect("transition_action")
    );
}

/// `transition_actions` applies a batch as `transition_action` would one by one: each
/// transition happens only from its expected state (status, attempt, lease owner) in its own
/// org, appends its event if it happens and clears the lease, and the answers come back in
/// the order sent, whatever the order of orgs and ids; a record appears once per batch (a
/// later transition of it does not happen); batches under leases and batches without (which
/// wait for the flush) behave alike; racing batches moving one record from one state: one
/// happens.
pub async fn action_transitions_apply_in_batches(store: &dyn Store) {
    let a = new_org(store, "act-batch-a").await;
    let b = new_org(store, "act-batch-b").await;
    let def = new_record_id();
    let now = at(20_000);
    let mut model: HashMap<Uuid, (Tenant, ActionRecord, Vec<ActionEvent>)> = HashMap::new();
    let mut ids = Vec::new();
    for (i, tenant) in [&a, &a, &a, &a, &a, &a, &b].into_iter().enumerate() {
        let r = pending(def, "batched", at(i as i64), at(i as i64));
        let e = create_record(store, tenant, &r).await;
        ids.push(r.id);
        model.insert(r.id, (tenant.clone(), r, vec![e]));
    }
    let leased = store
        .lease_due_actions(now, now.add_millis(60_000), "w1", 100)
        .await
        .expect("lease");
    assert_eq!(leased.len(), ids.len(), "every record is leased");
    for l in &leased {
        let entry = model.get_mut(&l.record.id).expect("a record of the story");
        entry.1 = leased_at(&entry.1, now);
        assert_eq!(l.record, entry.1);
    }
    let rec = |model: &HashMap<Uuid, (Tenant, ActionRecord, Vec<ActionEvent>)>, i: usize| {
        model[&ids[i]].1.clone()
    };
    async fn assert_model(
        store: &dyn Store,
        model: &HashMap<Uuid, (Tenant, ActionRecord, Vec<ActionEvent>)>,
        ctx: &str,
    ) {
        for (id, (tenant, r, events)) in model {
            assert_eq!(
                get_record(store, tenant, *id).await.as_ref(),
                Some(r),
                "{ctx}: record {id}"
            );
            assert_eq!(
                &events_of(store, tenant, *id).await,
                events,
                "{ctx}: events of {id}"
            );
        }
    }
    let transition = |tenant: &Tenant,
                      r: &ActionRecord,
                      expected: Expected,
                      next: &(ActionRecord, ActionEvent)| {
        apitrail_store::Transition {
            tenant: tenant.clone(),
            id: r.id,
            expected,
            state: next.0.state.clone(),
            event: next.1.clone(),
        }
    };

    assert_eq!(
        store.transition_actions(&[]).await.expect("an empty batch"),
        Vec::<bool>::new(),
        "an empty batch answers nothing"
    );

    // Batch 1, in an order that is neither the orgs' nor the ids'; all but one under leases
    // (so it waits for the flush).
    let (r0, r1, r2, r3, r4, q) = (
        rec(&model, 0),
        rec(&model, 1),
        rec(&model, 2),
        rec(&model, 3),
        rec(&model, 4),
        rec(&model, 6),
    );
    let t = now.add_millis(100);
    let r4_retry = {
        let (mut next, ev) = moved(&r4, ActionStatus::Pending, t, "attempt_failed");
        next.state.available_at = t.add_millis(50);
        let ev = ActionEvent::of(&next, "attempt_failed", ev.message);
        (next, ev)
    };
    let r0_done = moved(&r0, ActionStatus::Succeeded, t, "delivered");
    let q_failed = moved(&q, ActionStatus::Failed, t, "failed");
    let batch = vec![
        // happens: back in the queue
        transition(&a, &r4, expecting(&r4, Some("w1")), &r4_retry),
        // happens
        transition(&a, &r0, expecting(&r0, Some("w1")), &r0_done),
        // another owner's lease: does not happen
        transition(
            &a,
            &r1,
            expecting(&r1, Some("w2")),
            &moved(&r1, ActionStatus::Succeeded, t, "stale"),
        ),
        // the other org's record, in its org: happens
        transition(&b, &q, expecting(&q, Some("w1")), &q_failed),
        // the wrong attempt: does not happen
        transition(
            &a,
            &r2,
            Expected {
                attempt: 7,
                ..expecting(&r2, Some("w1"))
            },
            &moved(&r2, ActionStatus::Succeeded, t, "stale"),
        ),
        // r4 again, expecting the state its first transition above leaves (pending, the same
        // attempt, any owner), which applied one by one would happen: a record appears once
        // per batch, so it does not
        transition(
            &a,
            &r4,
            expecting(&r4_retry.0, None),
            &moved(&r4_retry.0, ActionStatus::Failed, t, "twice"),
        ),
        // a record of org a asked for in org b: not found there
        transition(
            &b,
            &r3,
            expecting(&r3, Some("w1")),
            &moved(&r3, ActionStatus::Succeeded, t, "elsewhere"),
        ),
        // no such record
        transition(
            &a,
            &pending(def, "batched", at(0), at(0)),
            expecting(&r3, Some("w1")),
            &moved(&r3, ActionStatus::Succeeded, t, "nowhere"),
        ),
    ];
    let done = store
        .transition_actions(&batch)
        .await
        .expect("transition_actions");
    assert_eq!(
        done,
        vec![true, true, false, true, false, false, false, false],
        "which transitions of the batch happened, in the order sent"
    );
    for (id, next) in [(r4.id, &r4_retry), (r0.id, &r0_done), (q.id, &q_failed)] {
        let entry = model.get_mut(&id).expect("a record of the story");
        entry.1 = next.0.clone();
        entry.2.push(next.1.clone());
    }
    assert_model(store, &model, "after the first batch").await;
    // The batch cleared r4's lease: it is due again, with its next attempt.
    let t2 = t.add_millis(60);
    let again = store
        .lease_due_actions(t2, t2.add_millis(60_000), "w2", 100)
        .await
        .expect("lease");
    assert_eq!(
        again.iter().map(|l| l.record.id).collect::<Vec<_>>(),
        vec![r4.id],
        "only the record put back by the batch is due again"
    );
    model.get_mut(&r4.id).expect("r4").1 = leased_at(&r4_retry.0, t2);

    // Batch 2, without leases: expecting no owner matches any.
    let (r1, r4) = (rec(&model, 1), rec(&model, 4));
    let t3 = t2.add_millis(100);
    let r1_ack = moved(&r1, ActionStatus::Acknowledged, t3, "acknowledged");
    let r4_done = moved(&r4, ActionStatus::Succeeded, t3, "delivered");
    let batch = vec![
        transition(&a, &r1, expecting(&r1, None), &r1_ack),
        // r0 left the state this expects
        transition(
            &a,
            &r0,
            expecting(&r0, Some("w1")),
            &moved(&r0, ActionStatus::Failed, t3, "late"),
        ),
        transition(&a, &r4, expecting(&r4, None), &r4_done),
    ];
    let done = store
        .transition_actions(&batch)
        .await
        .expect("transition_actions");
    assert_eq!(done, vec![true, false, true], "a batch without leases");
    for (id, next) in [(r1.id, &r1_ack), (r4.id, &r4_done)] {
        let entry = model.get_mut(&id).expect("a record of the story");
        entry.1 = next.0.clone();
        entry.2.push(next.1.clone());
    }
    assert_model(store, &model, "after a batch without leases").await;

    // Eight racing batches, each moving r5 (and r2, in the other order) from the same state:
    // one batch's transition of each happens.
    let (r2, r5) = (rec(&model, 2), rec(&model, 5));
    let batches: Vec<Vec<apitrail_store::Transition>> = (0..8)
        .map(|i| {
            let when = t3.add_millis(10 + i);
            let status = if i % 2 == 0 {
                ActionStatus::Succeeded
            } else {
                ActionStatus::Failed
            };
            let one = transition(
                &a,
                &r5,
                expecting(&r5, Some("w1")),
                &moved(&r5, status, when, &format!("racer_{i}")),
            );
            let two = transition(
                &a,
                &r2,
                expecting(&r2, Some("w1")),
                &moved(&r2, status, when, &format!("racer_{i}")),
            );
            if i % 2 == 0 {
                vec![one, two]
            } else {
                vec![two, one]
            }
        })
        .collect();
    let results = join_all(batches.iter().map(|b| store.transition_actions(b))).await;
    for id in [r2.id, r5.id] {
        let winners: Vec<&apitrail_store::Transition> = results
            .iter()
            .zip(&batches)
            .flat_map(|(r, b)| {
                let r = r.as_ref().expect("transition_actions");
                r.iter()
                    .zip(b)
                    .filter(|(d, t)| **d && t.id == id)
                    .map(|(_, t)| t)
            })
            .collect();
        assert_eq!(
            winners.len(),
            1,
            "exactly one racing transition of {id} happens"
        );
        let entry = model.get_mut(&id).expect("a record of the story");
        entry.1.state = winners[0].state.clone();
        entry.2.push(winners[0].event.clone());
    }
    assert_model(store, &model, "after the race").await;
}

// ---------------------------------------------------------------------------------------------
// Story 5: leasing

/// The reference model of the dispatcher's queue across orgs.
#[derive(Debug, Default)]
struct Queue {
    records: HashMap<Uuid, (Tenant, ActionRecord)>,
    /// When each record's lease runs out. The stories never ask at that very instant.
    leases: HashMap<Uuid, Timestamp>,
}

impl Queue {
    fn due(&self, now: Timestamp) -> HashSet<Uuid> {
        self.records
            .values()
            .filter(|(_, r)| {
                r.state.status == ActionStatus::Pending
                    && r.state.available_at <= now
                    && self.leases.get(&r.id).is_none_or(|until| *until < now)
            })
            .map(|(_, r)| r.id)
            .collect()
    }

    /// Leases at `now` and checks the result against the model: as many records as are due
    /// (up to `limit`), each due, once, with its org, its attempt counted and its first start
    /// recorded, as stored.
    async fn lease(
        &mut self,
        store: &dyn Store,
        now: Timestamp,
        until: Timestamp,
        owner: &str,
        limit: u32,
    ) -> Vec<Leased> {
        let due = self.due(now);
        let got = store
            .lease_due_actions(now, until, owner, limit)
            .await
            .expect("lease_due_actions");
        let ids: HashSet<Uuid> = got.iter().map(|l| l.record.id).collect();
        assert_eq!(ids.len(), got.len(), "a record leased twice in one call");
        assert!(
            ids.is_subset(&due),
            "leased at {now:?} records that are not due or still leased: {:?}",
            ids.difference(&due).collect::<Vec<_>>()
        );
        assert_eq!(
            got.len(),
            due.len().min(limit as usize),
            "a lease at {now:?} with limit {limit} takes every due record it may"
        );
        for l in &got {
            let (tenant, before) = self.records[&l.record.id].clone();
            assert_eq!(
                l.tenant, tenant,
                "record {} comes with its org",
                l.record.id
            );
            let want = leased_at(&before, now);
            assert_eq!(l.record, want, "leased record {}", want.id);
            self.leases.insert(want.id, until);
            self.records.insert(want.id, (tenant, want));
        }
        got
    }

    /// Every record reads as the model says.
    async fn assert_stored(&self, store: &dyn Store, ctx: &str) {
        for (tenant, r) in self.records.values() {
            assert_eq!(
                get_record(store, tenant, r.id).await.as_ref(),
                Some(r),
                "{ctx}: record {}",
                r.id
            );
        }
    }
}

/// `lease_due_actions` hands out only pending records due at `now` whose lease is free,
/// across orgs (each with its tenant), counting the attempt and recording the first start;
/// a leased record is not handed out again before its lease runs out, and is after; `limit`
/// bounds each call without losing records.
pub async fn due_actions_are_leased_until_the_lease_expires(store: &dyn Store) {
    let mut rng = Rng::with_seed(0xAC71_1EA5);
    let orgs = [
        new_org(store, "act-lease-a").await,
        new_org(store, "act-lease-b").await,
        new_org(store, "act-lease-c").await,
    ];
    let def = new_record_id();
    let now = at(100_000);
    let mut queue = Queue::default();
    for i in 0..90usize {
        let tenant = orgs[i % 3].clone();
        let created = at(rng.i64(0..90_000));
        let mut r = pending(def, "send_email", created, now);
        match i % 9 {
            // Due a while ago, and due at this very instant.
            0 => r.state.available_at = now.add_millis(-rng.i64(1..50_000)),
            1 => {}
            // Due later: some before the first lease runs out, some after.
            2 => r.state.available_at = now.add_millis(rng.i64(1..40_000)),
            3 => r.state.available_at = now.add_millis(1),
            // A retry: already attempted, started long ago.
            4 => {
                r.state.available_at = now.add_millis(-rng.i64(1..50_000));
                r.state.attempt = 2;
                r.state.started_at = Some(created.add_millis(5));
            }
            // Not pending, although "due".
            _ => {
                r.state.status = [
                    ActionStatus::Acknowledged,
                    ActionStatus::Succeeded,
                    ActionStatus::Failed,
                    ActionStatus::TimedOut,
                ][i % 9 - 5];
                r.state.available_at = now.add_millis(-rng.i64(1..50_000));
                r.state.attempt = 1;
                r.state.started_at = Some(created);
                r.state.timeout_at = Some(now.add_millis(-1));
            }
        }
        create_record(store, &tenant, &r).await;
        queue.records.insert(r.id, (tenant, r));
    }
    assert!(!queue.due(now).is_empty(), "fixture: some records are due");

    // Nothing is due before the earliest record.
    assert!(
        queue
            .lease(store, at(-1), at(60_000), "early", 1_000)
            .await
            .is_empty()
    );
    let until = now.add_millis(30_000);
    let first = queue.lease(store, now, until, "w1", 1_000).await;
    assert!(!first.is_empty());
    // Before the lease runs out, only records that became due since are handed out.
    let first_ids: HashSet<Uuid> = first.iter().map(|l| l.record.id).collect();
    let again = queue
        .lease(store, now.add_millis(1), until, "w2", 1_000)
        .await;
    assert!(
        again.iter().all(|l| !first_ids.contains(&l.record.id)),
        "a record leased again while its lease runs"
    );
    let later = until.add_millis(-1);
    let second = queue
        .lease(store, later, later.add_millis(30_000), "w2", 1_000)
        .await;
    assert!(!second.is_empty(), "fixture: records became due meanwhile");
    // After it runs out, w1's records are handed out again, with their next attempt.
    let after = until.add_millis(1);
    let third = queue
        .lease(store, after, after.add_millis(30_000), "w3", 1_000)
        .await;
    assert!(
        first_ids
            .iter()
            .all(|id| third.iter().any(|l| l.record.id == *id)),
        "every record of the expired lease is leased again"
    );
    queue.assert_stored(store, "after three leases").await;

    // Small limits, long after every lease ran out: every pending record, a few at a time.
    let t = now.add_millis(1_000_000);
    let pending_total = queue.due(t).len();
    let mut seen = HashSet::new();
    for _ in 0..100 {
        let got = queue.lease(store, t, t.add_millis(60_000), "w4", 4).await;
        if got.is_empty() {
            break;
        }
        for l in got {
            assert!(
                seen.insert(l.record.id),
                "record {} leased twice",
                l.record.id
            );
        }
    }
    assert_eq!(
        seen.len(),
        pending_total,
        "the small leases took every record"
    );
    queue.assert_stored(store, "after the small leases").await;
}

/// Eight dispatchers leasing at once from 500 due records of two orgs get each record exactly
/// once, with its org; each lease is recorded under its owner (only that owner's transition
/// happens).
pub async fn concurrent_leasing_hands_out_each_record_once(store: &dyn Store) {
    const N: usize = 500;
    let orgs = [
        new_org(store, "act-race-a").await,
        new_org(store, "act-race-b").await,
    ];
    let def = new_record_id();
    let now = at(1_000_000);
    let until = now.add_millis(60_000);
    let records: Vec<(Tenant, ActionRecord)> = (0..N)
        .map(|i| {
            let created = at(i as i64 * 7);
            let r = pending(
                def,
                "send_email",
                created,
                created.add_millis(i as i64 % 97),
            );
            (orgs[i % 2].clone(), r)
        })
        .collect();
    for chunk in records.chunks(50) {
        join_all(chunk.iter().map(|(t, r)| create_record(store, t, r))).await;
    }

    let leased = Cell::new(0usize);
    let workers = (0..8).map(|w| {
        let leased = &leased;
        async move {
            let owner = format!("worker-{w}");
            let mut mine = Vec::new();
            for _ in 0..2_000 {
                if leased.get() >= N {
                    break;
                }
                let got = store
                    .lease_due_actions(now, until, &owner, 16)
                    .await
                    .expect("lease_due_actions");
                leased.set(leased.get() + got.len());
                mine.extend(got.into_iter().map(|l| (owner.clone(), l)));
            }
            mine
        }
    });
    let all: Vec<(String, Leased)> = join_all(workers).await.into_iter().flatten().collect();
    let by_id: HashMap<Uuid, &(Tenant, ActionRecord)> =
        records.iter().map(|tr| (tr.1.id, tr)).collect();
    let mut seen = HashSet::new();
    for (_, l) in &all {
        assert!(
            seen.insert(l.record.id),
            "record {} leased twice",
            l.record.id
        );
        let (tenant, r) = by_id[&l.record.id];
        assert_eq!(&l.tenant, tenant, "record {} comes with its org", r.id);
        assert_eq!(l.record, leased_at(r, now));
    }
    assert_eq!(seen.len(), N, "every due record is leased");
    assert!(
        store
            .lease_due_actions(now, until, "late", 1_000)
            .await
            .expect("lease_due_actions")
            .is_empty(),
        "nothing is left to lease"
    );

    // The lease belongs to the one that got it.
    for (owner, l) in all.iter().step_by(10) {
        let (next, ev) = moved(
            &l.record,
            ActionStatus::Succeeded,
            now.add_millis(5),
            "delivered",
        );
        let other = if owner == "worker-0" {
            "worker-1"
        } else {
            "worker-0"
        };
        assert!(
            !store
                .transition_action(
                    &l.tenant,
                    l.record.id,
                    &expecting(&l.record, Some(other)),
                    &next.state,
                    &ev
                )
                .await
                .expect("transition_action"),
            "{other} completed {owner}'s lease"
        );
        assert!(
            store
                .transition_action(
                    &l.tenant,
                    l.record.id,
                    &expecting(&l.record, Some(owner)),
                    &next.state,
                    &ev
                )
                .await
                .expect("transition_action"),
            "{owner} could not complete its own lease"
        );
    }
}

/// `expired_acknowledgements` returns the acknowledged records (of any org, with their
/// tenant) whose `timeout_at` is at or before `now`, as stored, up to `limit`; it changes
/// nothing, and a record timed out by a transition is no longer returned.
pub async fn expired_acknowledgements_are_found_across_orgs(store: &dyn Store) {
    let mut rng = Rng::with_seed(0xAC71_0ACC);
    let orgs = [
        new_org(store, "act-ack-a").await,
        new_org(store, "act-ack-b").await,
    ];
    let def = new_record_id();
    let now = at(500_000);
    let mut records: HashMap<Uuid, (Tenant, ActionRecord)> = HashMap::new();
    for i in 0..48usize {
        let tenant = orgs[i % 2].clone();
        let mut r = pending(def, "send_email", at(rng.i64(0..10_000)), at(10_000));
        r.state.attempt = 1;
        r.state.started_at = Some(at(10_000));
        r.state.status = ActionStatus::Acknowledged;
        r.state.timeout_at = Some(match i % 8 {
            0 | 1 => now.add_millis(-rng.i64(1..100_000)),
            2 => now,
            3 => now.add_millis(1),
            4 => now.add_millis(rng.i64(1..100_000)),
            _ => now.add_millis(-1),
        });
        match i % 8 {
            5 => r.state.timeout_at = None,
            6 => r.state.status = ActionStatus::Pending,
            7 => {
                r.state.status = [
                    ActionStatus::Succeeded,
                    ActionStatus::Failed,
                    ActionStatus::TimedOut,
                ][i % 3];
                r.state.completed_at = Some(at(20_000));
            }
            _ => {}
        }
        create_record(store, &orgs[i % 2], &r).await;
        records.insert(r.id, (tenant, r));
    }
    let expired_at = |records: &HashMap<Uuid, (Tenant, ActionRecord)>, t: Timestamp| {
        records
            .values()
            .filter(|(_, r)| {
                r.state.status == ActionStatus::Acknowledged
                    && r.state.timeout_at.is_some_and(|at| at <= t)
            })
            .map(|(_, r)| r.id)
            .collect::<HashSet<Uuid>>()
    };
    let check = |got: &[Leased], records: &HashMap<Uuid, (Tenant, ActionRecord)>| {
        let ids: HashSet<Uuid> = got.iter().map(|l| l.record.id).collect();
        assert_eq!(ids.len(), got.len(), "a record returned twice");
        for l in got {
            let (tenant, r) = &records[&l.record.id];
            assert_eq!(&l.tenant, tenant, "record {} comes with its org", r.id);
            assert_eq!(&l.record, r, "record {} as stored", r.id);
        }
        ids
    };

    for t in [
        now,
        now.add_millis(-1),
        now.add_millis(-50_000),
        at(0),
        now.add_millis(100_000),
    ] {
        let want = expired_at(&records, t);
        for _ in 0..2 {
            let got = store
                .expired_acknowledgements(t, 1_000)
                .await
                .expect("expired_acknowledgements");
            assert_eq!(
                check(&got, &records),
                want,
                "expired acknowledgements at {t:?}"
            );
        }
        let got = store
            .expired_acknowledgements(t, 3)
            .await
            .expect("expired_acknowledgements");
        let ids = check(&got, &records);
        assert_eq!(ids.len(), want.len().min(3), "limit 3 at {t:?}");
        assert!(ids.is_subset(&want));
    }
    assert!(
        expired_at(&records, now).len() >= 6,
        "fixture: acknowledgements expire"
    );

    // Timing one out removes it.
    let id = *expired_at(&records, now)
        .iter()
        .next()
        .expect("one expired");
    let (tenant, r) = records[&id].clone();
    let (timed_out, ev) = moved(&r, ActionStatus::TimedOut, now, "timed_out");
    assert!(
        store
            .transition_action(&tenant, id, &expecting(&r, None), &timed_out.state, &ev)
            .await
            .expect("transition_action")
    );
    records.insert(id, (tenant, timed_out));
    let got = store
        .expired_acknowledgements(now, 1_000)
        .await
        .expect("expired_acknowledgements");
    assert_eq!(check(&got, &records), expired_at(&records, now));
    for (tenant, r) in records.values() {
        assert_eq!(get_record(store, tenant, r.id).await.as_ref(), Some(r));
    }
}

// ---------------------------------------------------------------------------------------------
// Story 6: isolation

/// Another org never sees, finds, lists, counts, transitions or changes one org's
/// credentials, destinations, definitions, records or events, even when it uses the same
/// ids and the same names for its own (which are then independent of the first org's).
pub async fn action_tenants_never_see_each_other(store: &dyn Store) {
    let a = new_org(store, "act-iso-a").await;
    let b = new_org(store, "act-iso-b").await;
    let audit_b_before = audit_log(store, &b).await;

    // Org a's things.
    let cred = credential("a's key", vec![7; 24], at(10));
    store
        .create_credential(&a, &cred, &audit_entry("create", "credential", "c", at(10)))
        .await
        .expect("create_credential");
    let dest = Destination {
        id: new_record_id(),
        label: "a's hook".into(),
        config: WebhookConfig {
            url: "https://a.example.com/hook".into(),
            headers: tags(&[("X-Org", "a")]),
            signaling: true,
            response_time_sla_ms: 1_000,
        },
        credential_id: Some(cred.id),
        tags: tags(&[("team", "a")]),
        allow_private: Some(false),
        created_at: at(20),
        updated_at: at(20),
        deleted_at: None,
    };
    store
        .put_destination(
            &a,
            &dest,
            true,
            &audit_entry("create", "destination", "d", at(20)),
        )
        .await
        .expect("put_destination");
    let def = definition("shared_name", &["shared_alias"], "{}", at(30));
    store
        .put_action_definition(
            &a,
            &def,
            true,
            &audit_entry("create", "action_definition", "x", at(30)),
        )
        .await
        .expect("put_action_definition");
    let records: Vec<ActionRecord> = (0..5)
        .map(|i| pending(def.id, &def.variant, at(40 + i), at(40 + i)))
        .collect();
    for r in &records {
        create_record(store, &a, r).await;
    }
    let audit_a = audit_log(store, &a).await;

    // Through b's tenant, none of it exists.
    let by_def = ActionFilter {
        definition_id: Some(Some(def.id)),
        ..ActionFilter::default()
    };
    let by_id = ActionFilter {
        search: Some(ActionSearch::Id(Some(records[0].id))),
        ..ActionFilter::default()
    };
    let by_tag = ActionFilter {
        search: Some(ActionSearch::Tag("team".into(), "payments".into())),
        ..ActionFilter::default()
    };
    let check_b_sees_nothing_of_a = |ctx: &'static str| {
        let (a, b) = (&a, &b);
        let (cred, dest, def, records) = (&cred, &dest, &def, &records);
        let filters = [
            ActionFilter::default(),
            by_def.clone(),
            by_id.clone(),
            by_tag.clone(),
        ];
        async move {
            assert_ne!(
                store
                    .get_credential(b, cred.id)
                    .await
                    .expect("get")
                    .as_ref(),
                Some(cred),
                "{ctx}: b reads a's credential"
            );
            assert!(
                store
                    .list_credentials(b)
                    .await
                    .expect("list")
                    .iter()
                    .all(|c| c.label != cred.label),
                "{ctx}: b lists a's credential"
            );
            assert_ne!(
                store
                    .get_destination(b, dest.id)
                    .await
                    .expect("get")
                    .as_ref(),
                Some(dest),
                "{ctx}: b reads a's destination"
            );
            assert!(
                store
                    .list_destinations(b, true)
                    .await
                    .expect("list")
                    .iter()
                    .all(|d| d.label != dest.label),
                "{ctx}: b lists a's destination"
            );
            for version in [None, Some(1)] {
                assert_ne!(
                    store
                        .get_action_definition(b, def.id, version)
                        .await
                        .expect("get")
                        .as_ref(),
                    Some(def),
                    "{ctx}: b reads a's definition"
                );
            }
            for name in def.names() {
                assert_ne!(
                    store
                        .find_action_definition(b, name)
                        .await
                        .expect("find")
                        .as_ref(),
                    Some(def),
                    "{ctx}: b finds a's definition by {name}"
                );
            }
            assert!(
                !store
                    .list_action_definitions(b, true)
                    .await
                    .expect("list")
                    .contains(def),
                "{ctx}: b lists a's definition"
            );
            for r in records {
                assert_ne!(
                    get_record(store, b, r.id).await.as_ref(),
                    Some(r),
                    "{ctx}: b reads a's record"
                );
            }
            for filter in &filters {
                let (items, _) = store
                    .list_action_records(b, filter, 0, 50)
                    .await
                    .expect("list");
                assert!(
                    items.iter().all(|i| !records.contains(i)),
                    "{ctx}: b lists a's records with {filter:?}"
                );
            }
            let ids: Vec<Uuid> = records.iter().map(|r| r.id).collect();
            let a_events = store.action_events(a, &ids).await.expect("events");
            assert!(
                store
                    .action_events(b, &ids)
                    .await
                    .expect("events")
                    .iter()
                    .all(|e| !a_events.contains(e)),
                "{ctx}: b reads a's events"
            );
        }
    };
    check_b_sees_nothing_of_a("b is empty").await;
    assert!(store.list_credentials(&b).await.expect("list").is_empty());
    assert!(
        store
            .list_destinations(&b, true)
            .await
            .expect("list")
            .is_empty()
    );
    assert!(
        store
            .list_action_definitions(&b, true)
            .await
            .expect("list")
            .is_empty()
    );
    assert_eq!(
        store
            .list_action_records(&b, &ActionFilter::default(), 0, 50)
            .await
            .expect("list"),
        (vec![], 0)
    );
    for filter in [ActionFilter::default(), by_def.clone(), by_id.clone()] {
        assert_eq!(
            store
                .count_action_records(&b, &filter)
                .await
                .expect("count"),
            0
        );
    }
    // b cannot transition a's records.
    let r = &records[0];
    let (next, ev) = moved(r, ActionStatus::Failed, at(50), "failed");
    assert!(
        !store
            .transition_action(&b, r.id, &expecting(r, None), &next.state, &ev)
            .await
            .expect("transition_action"),
        "b transitioned a's record"
    );
    assert_eq!(get_record(store, &a, r.id).await.as_ref(), Some(r));
    assert_eq!(
        events_of(store, &a, r.id).await.len(),
        1,
        "no event appended"
    );

    // b makes its own things with the same ids and names: no conflict with a's.
    let cred_b = Credential {
        label: "b's key".into(),
        secret: WebhookSecret::from_bytes(vec![9; 24]),
        ..cred.clone()
    };
    store
        .create_credential(
            &b,
            &cred_b,
            &audit_entry("create", "credential", "c", at(60)),
        )
        .await
        .expect("b's credential with a's id");
    let dest_b = Destination {
        label: "b's hook".into(),
        tags: tags(&[("team", "b")]),
        ..dest.clone()
    };
    store
        .put_destination(
            &b,
            &dest_b,
            true,
            &audit_entry("create", "destination", "d", at(60)),
        )
        .await
        .expect("b's destination with a's id");
    let def_b = ActionDefinition {
        schema: r#"{"b":true}"#.into(),
        ..def.clone()
    };
    store
        .put_action_definition(
            &b,
            &def_b,
            true,
            &audit_entry("create", "action_definition", "x", at(60)),
        )
        .await
        .expect("b's definition with a's id and names");
    let records_b: Vec<ActionRecord> = records
        .iter()
        .map(|r| ActionRecord {
            input: r#"{"org":"b"}"#.into(),
            tags: tags(&[("team", "b")]),
            ..r.clone()
        })
        .collect();
    for r in &records_b {
        create_record(store, &b, r).await;
    }
    // b changes and deletes its own; a's stay as they were.
    let (next_b, ev) = moved(&records_b[0], ActionStatus::Failed, at(70), "failed");
    assert!(
        store
            .transition_action(
                &b,
                r.id,
                &expecting(&records_b[0], None),
                &next_b.state,
                &ev
            )
            .await
            .expect("transition_action")
    );
    let dest_b_deleted = Destination {
        deleted_at: Some(at(80)),
        updated_at: at(80),
        ..dest_b.clone()
    };
    store
        .put_destination(
            &b,
            &dest_b_deleted,
            false,
            &audit_entry("delete", "destination", "d", at(80)),
        )
        .await
        .expect("delete b's destination");
    let def_b_deleted = ActionDefinition {
        deleted_at: Some(at(80)),
        updated_at: at(80),
        ..def_b.clone()
    };
    store
        .put_action_definition(
            &b,
            &def_b_deleted,
            false,
            &audit_entry("delete", "action_definition", "x", at(80)),
        )
        .await
        .expect("delete b's definition");

    check_b_sees_nothing_of_a("b has its own").await;
    // a's things are untouched.
    assert_eq!(
        store.get_credential(&a, cred.id).await.expect("get"),
        Some(cred.clone())
    );
    assert_eq!(
        store.list_credentials(&a).await.expect("list"),
        vec![cred.clone()]
    );
    assert_eq!(
        store.get_destination(&a, dest.id).await.expect("get"),
        Some(dest.clone())
    );
    assert_eq!(
        store.list_destinations(&a, false).await.expect("list"),
        vec![dest.clone()]
    );
    assert_eq!(
        store
            .get_action_definition(&a, def.id, None)
            .await
            .expect("get"),
        Some(def.clone())
    );
    for name in def.names() {
        assert_eq!(
            store.find_action_definition(&a, name).await.expect("find"),
            Some(def.clone()),
            "a still finds its definition by {name}"
        );
    }
    let mut newest_a = records.clone();
    newest_records_first(&mut newest_a);
    for filter in [
        ActionFilter::default(),
        by_def.clone(),
        by_id.clone(),
        by_tag.clone(),
    ] {
        assert_filter(store, &a, &newest_a, &filter).await;
    }
    for r in &records {
        assert_eq!(
            events_of(store, &a, r.id).await.len(),
            1,
            "a's record {} has one event",
            r.id
        );
    }
    // And b's are b's.
    assert_eq!(
        store.get_credential(&b, cred.id).await.expect("get"),
        Some(cred_b.clone())
    );
    assert_eq!(
        store.get_destination(&b, dest.id).await.expect("get"),
        Some(dest_b_deleted.clone())
    );
    assert!(
        store
            .list_destinations(&b, false)
            .await
            .expect("list")
            .is_empty()
    );
    assert_eq!(
        store
            .find_action_definition(&b, "shared_name")
            .await
            .expect("find"),
        None
    );
    let mut newest_b = records_b.clone();
    newest_b[0] = next_b;
    newest_records_first(&mut newest_b);
    for filter in [ActionFilter::default(), by_def, by_id, by_tag] {
        assert_filter(store, &b, &newest_b, &filter).await;
    }
    assert_eq!(events_of(store, &b, r.id).await.len(), 2);

    // Each org's audit log holds its own mutations only.
    assert_eq!(
        audit_log(store, &a).await,
        audit_a,
        "b's mutations stay out of a's log"
    );
    assert_eq!(
        audit_log(store, &b).await.len(),
        audit_b_before.len() + 5,
        "b's log holds b's five mutations"
    );
    for t in [&a, &b] {
        assert!(store.verify_audit_chain(t).await.expect("verify").ok);
    }
}

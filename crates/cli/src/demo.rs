//! `apitrail serve --demo`: a demo org with keys and a month of realistic traffic.
//!
//! Safe to repeat on the same data directory: the org and its traffic are created once; each
//! start revokes the previous console key and prints a fresh one (secrets cannot be shown
//! twice).

use apitrail_api::native::admin;
use apitrail_model::{NewApiKey, NewOrg, OrgId, PrincipalType, Scope, Timestamp};
use apitrail_store::{LogBatch, Store};
use apitrail_traffic::Traffic;

/// The demo org's id (numeric, so that every dialect accepts it as a path parameter).
pub const DEMO_ORG: &str = "1";
const CONSOLE_KEY: &str = "demo console (printed at startup)";
const DEMO_LOGS: usize = 20_000;
const DAY_MS: i64 = 86_400_000;

/// What the demo set up.
#[derive(Debug)]
pub struct Demo {
    /// The org.
    pub org_id: String,
    /// A fresh secret with every scope.
    pub secret: String,
    /// Request logs in the org.
    pub logs: u64,
}

fn key(name: &str, scopes: &[Scope], principal: PrincipalType, id: &str) -> NewApiKey {
    NewApiKey {
        name: name.into(),
        scopes: scopes.iter().copied().collect(),
        principal_type: principal,
        principal_id: id.into(),
        user_id: (principal == PrincipalType::User).then(|| id.to_owned()),
        email: (principal == PrincipalType::User).then(|| format!("{id}@example.com")),
        service_account_id: (principal == PrincipalType::ServiceAccount).then(|| id.to_owned()),
    }
}

/// Creates (or reuses) the demo org, fills it, and mints a console key.
pub async fn prepare(store: &dyn Store) -> Result<Demo, String> {
    let org_id = OrgId::parse(DEMO_ORG).map_err(|e| format!("the demo org id: {e}"))?;
    let tenant = match store
        .tenant(&org_id)
        .await
        .map_err(|e| format!("cannot look up the demo org: {e}"))?
    {
        Some(t) => t,
        None => {
            admin::create_org_as(
                store,
                NewOrg {
                    id: org_id.clone(),
                    name: "Demo Org".into(),
                },
            )
            .await
            .map_err(|e| format!("cannot create the demo org: {}", e.message))?;
            store
                .tenant(&org_id)
                .await
                .map_err(|e| format!("cannot look up the demo org: {e}"))?
                .ok_or("the demo org vanished")?
        }
    };
    let mut keys = store
        .list_api_keys(&tenant)
        .await
        .map_err(|e| format!("cannot list the demo org's keys: {e}"))?;
    if keys.iter().all(|k| k.name == CONSOLE_KEY) {
        for new in [
            key(
                "Production backend",
                &[Scope::Read, Scope::Write],
                PrincipalType::ServiceAccount,
                "sa_backend",
            ),
            key(
                "Data pipeline",
                &[Scope::Write],
                PrincipalType::ServiceAccount,
                "sa_pipeline",
            ),
            key(
                "Alice (dashboard)",
                &[Scope::Read],
                PrincipalType::User,
                "alice",
            ),
        ] {
            let (k, _) = admin::create_key_as(store, &tenant, new, None)
                .await
                .map_err(|e| format!("cannot create a demo key: {}", e.message))?;
            keys.push(k);
        }
    }
    for old in keys
        .iter()
        .filter(|k| k.name == CONSOLE_KEY && k.revoked_at.is_none())
    {
        admin::revoke_key_as(store, &tenant, old.id, None)
            .await
            .map_err(|e| format!("cannot revoke the previous console key: {}", e.message))?;
    }
    let existing = store
        .count_request_logs(&tenant)
        .await
        .map_err(|e| format!("cannot count the demo org's request logs: {e}"))?;
    if existing < 10_000 {
        let ids = keys
            .iter()
            .filter(|k| k.name != CONSOLE_KEY)
            .map(|k| k.id.to_string())
            .collect();
        let now = Timestamp::now();
        let logs =
            Traffic::with_key_ids(42, ids).spread(DEMO_LOGS, now.add_millis(-30 * DAY_MS), now);
        for chunk in logs.chunks(5_000) {
            store
                .insert_request_logs(vec![LogBatch::new(tenant.clone(), chunk.to_vec())])
                .await
                .map_err(|e| format!("cannot store the demo traffic: {e}"))?;
        }
    }
    let (_, secret) = admin::create_key_as(
        store,
        &tenant,
        key(
            CONSOLE_KEY,
            &[Scope::Read, Scope::Write, Scope::Admin],
            PrincipalType::User,
            "demo",
        ),
        None,
    )
    .await
    .map_err(|e| format!("cannot create the console key: {}", e.message))?;
    Ok(Demo {
        org_id: DEMO_ORG.into(),
        secret: secret.expose().to_owned(),
        logs: store
            .count_request_logs(&tenant)
            .await
            .map_err(|e| format!("cannot count the demo org's request logs: {e}"))?,
    })
}

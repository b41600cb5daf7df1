//! `apitrail orgs ...`, `apitrail keys ...` and `apitrail audit ...`: the same operations as
//! the operator API (and the audit check), performed directly on the store (for bootstrapping
//! before any token exists, and for checks that must not depend on a running server). They
//! print the API's own JSON shapes.

use apitrail_api::native::admin::{self, KeyBody, OrgBody};
use apitrail_model::key::NewApiKeyInput;
use apitrail_model::{NewApiKey, NewOrg, OrgId, Tenant};
use apitrail_store::Store;
use apitrail_store_sqlite::SqliteOptions;
use uuid::Uuid;

use apitrail_api::dialects::audit::VerifyReport;

use crate::config::{AuditCommand, KeysCommand, OrgsCommand, StoreArgs};

fn print(value: &impl serde::Serialize) -> Result<(), String> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| format!("cannot print the result as JSON: {e}"))?;
    println!("{text}");
    Ok(())
}

/// An error's context: what the command was doing and on which store (`store` is
/// [`StoreArgs::describe`], which never shows the URL's secrets).
fn failed<E: std::fmt::Display>(doing: String, store: &str) -> impl FnOnce(E) -> String + '_ {
    move |e| format!("{doing} ({store}): {e}")
}

/// Closes the store, saying where if that fails.
async fn close(store: &dyn Store, at: &str) -> Result<(), String> {
    store
        .shutdown()
        .await
        .map_err(failed("cannot close the store cleanly".into(), at))
}

fn field_errors(errors: Vec<apitrail_model::FieldError>) -> String {
    errors
        .iter()
        .map(|e| format!("--{} {}", e.field.replace('_', "-"), e.message))
        .collect::<Vec<_>>()
        .join("; ")
}

fn small() -> SqliteOptions {
    SqliteOptions {
        readers: 1,
        writer_cache_mib: 16,
        reader_cache_mib: 16,
        ..SqliteOptions::default()
    }
}

async fn tenant(store: &dyn Store, at: &str, org: &str) -> Result<Tenant, String> {
    let id = OrgId::parse(org).map_err(|e| format!("--org: {e}"))?;
    store
        .tenant(&id)
        .await
        .map_err(failed(format!("cannot look up org {org:?}"), at))?
        .ok_or_else(|| format!("no org has the id {org:?} in {at} (see `apitrail orgs list`)"))
}

/// Runs an `orgs` command.
pub async fn orgs(store_args: StoreArgs, command: OrgsCommand) -> Result<(), String> {
    let at = store_args.describe();
    let store = store_args.open(small()).await?;
    let result = match command {
        OrgsCommand::Create { id, name } => {
            let new = NewOrg::parse(id, Some(name)).map_err(field_errors)?;
            let doing = format!("cannot create org {:?}", new.id.as_str());
            let org = admin::create_org_as(store.as_ref(), new)
                .await
                .map_err(|e| failed(doing, &at)(e.message))?;
            print(&OrgBody::from(org))
        }
        OrgsCommand::List => {
            let mut all = Vec::new();
            let mut after = None;
            loop {
                let page = store
                    .list_orgs(after.as_ref(), 1000)
                    .await
                    .map_err(failed("cannot list the orgs".into(), &at))?;
                after = page.items.last().map(|o| o.id.clone());
                all.extend(page.items.into_iter().map(OrgBody::from));
                if !page.has_more {
                    break;
                }
            }
            print(&all)
        }
    };
    close(store.as_ref(), &at).await?;
    result
}

/// Runs a `keys` command.
pub async fn keys(store_args: StoreArgs, command: KeysCommand) -> Result<(), String> {
    let at = store_args.describe();
    let store = store_args.open(small()).await?;
    let result = run_keys(store.as_ref(), &at, command).await;
    close(store.as_ref(), &at).await?;
    result
}

async fn run_keys(store: &dyn Store, at: &str, command: KeysCommand) -> Result<(), String> {
    match command {
        KeysCommand::Create {
            org,
            name,
            scopes,
            principal_type,
            principal_id,
            user_id,
            email,
            service_account_id,
        } => {
            let tenant = tenant(store, at, &org).await?;
            let doing = format!("cannot create key {name:?} on org {org:?}");
            let new = NewApiKey::try_from(NewApiKeyInput {
                principal_id: Some(principal_id.unwrap_or_else(|| name.clone())),
                name: Some(name),
                scopes: Some(scopes),
                principal_type: Some(principal_type),
                user_id,
                email,
                service_account_id,
            })
            .map_err(field_errors)?;
            let (key, secret) = admin::create_key_as(store, &tenant, new, None)
                .await
                .map_err(|e| failed(doing, at)(e.message))?;
            let mut body = serde_json::to_value(KeyBody::from(key))
                .map_err(|e| format!("cannot print the new key as JSON: {e}"))?;
            body["secret"] = serde_json::Value::String(secret.expose().to_owned());
            print(&body)?;
            eprintln!(
                "Store the secret now: apitrail keeps only its SHA-256 and cannot show it again."
            );
            Ok(())
        }
        KeysCommand::List { org } => {
            let tenant = tenant(store, at, &org).await?;
            let keys = store
                .list_api_keys(&tenant)
                .await
                .map_err(failed(format!("cannot list the keys of org {org:?}"), at))?;
            print(&keys.into_iter().map(KeyBody::from).collect::<Vec<_>>())
        }
        KeysCommand::Revoke { org, id } => {
            let tenant = tenant(store, at, &org).await?;
            let id = Uuid::try_parse(&id).map_err(|_| format!("--id {id:?} is not a key id"))?;
            match admin::revoke_key_as(store, &tenant, id, None)
                .await
                .map_err(|e| {
                    failed(format!("cannot revoke key {id} of org {org:?}"), at)(e.message)
                })? {
                Some(key) => print(&KeyBody::from(key)),
                None => Err(format!("org {org:?} has no key {id} in {at}")),
            }
        }
    }
}

/// Runs an `audit` command. A chain that does not verify is an error (exit status 1), after
/// the report is printed.
pub async fn audit(store_args: StoreArgs, command: AuditCommand) -> Result<(), String> {
    let at = store_args.describe();
    let store = store_args.open(small()).await?;
    let result = match command {
        AuditCommand::Verify { org } => match tenant(store.as_ref(), &at, &org).await {
            Ok(tenant) => match store.verify_audit_chain(&tenant).await {
                Ok(report) => {
                    let ok = report.ok;
                    let bad = report.first_bad_id;
                    print(&VerifyReport::from(report)).and_then(|()| {
                        if ok {
                            Ok(())
                        } else {
                            Err(match bad {
                                Some(id) => format!(
                                    "the audit log of org {org:?} does not verify: entry {id} was altered, removed or reordered"
                                ),
                                None => format!(
                                    "the audit log of org {org:?} does not verify: its newest entries are missing"
                                ),
                            })
                        }
                    })
                }
                Err(e) => Err(failed(
                    format!("cannot verify the audit log of org {org:?}"),
                    &at,
                )(e)),
            },
            Err(e) => Err(e),
        },
    };
    close(store.as_ref(), &at).await?;
    result
}

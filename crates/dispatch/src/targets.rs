//! Where deliveries go: a record's destination and the secret signing it, read from the store
//! at most once per [`DispatchConfig::destination_ttl`](crate::DispatchConfig) per destination.
//!
//! Every delivery needs its destination and, if it has one, its credential. Read per delivery,
//! those were two of the four statements a delivery cost (the others: its share of a lease,
//! and its outcome), on the same connections the API reads through. Records of one
//! destination arrive in bursts, so a short-lived cache answers nearly all of them, while a
//! changed or deleted destination (or credential) is still seen within the TTL (1 s by
//! default). Deliveries that miss together share one read. Store errors are not kept: the
//! next delivery reads again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use apitrail_model::{Destination, Tenant, WebhookSecret};
use apitrail_store::{Store, StoreError};
use tokio::sync::OnceCell;
use uuid::Uuid;

/// What a record's destination comes to.
#[derive(Debug)]
pub(crate) enum Target {
    /// Deliverable: the live destination and, if it has a credential, its signing secret.
    Ready {
        destination: Destination,
        secret: Option<WebhookSecret>,
    },
    /// The destination was deleted (or is not one of the org's).
    Gone,
    /// The destination's credential no longer exists.
    NoCredential { signaling: bool },
}

/// Destinations by org and id, each kept for `ttl` from the moment it was first asked for.
#[derive(Debug)]
pub(crate) struct Targets {
    ttl: Duration,
    slots: Mutex<Slots>,
}

#[derive(Debug)]
struct Slots {
    /// By (org key, destination id): destination ids are only unique within an org.
    map: HashMap<(i64, Uuid), Arc<Slot>>,
    /// When expired slots were last dropped (at most once per `ttl`, so the map holds the
    /// destinations of about one `ttl` of deliveries).
    swept: Instant,
}

/// One destination's answer, read once by whichever delivery asks first while the others
/// wait for it.
#[derive(Debug)]
struct Slot {
    born: Instant,
    target: OnceCell<Arc<Target>>,
}

impl Targets {
    /// An empty cache keeping answers for `ttl` (zero: every delivery reads the store).
    pub(crate) fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            slots: Mutex::new(Slots {
                map: HashMap::new(),
                swept: Instant::now(),
            }),
        }
    }

    /// The destination `id` of `tenant`, from the cache or the store.
    pub(crate) async fn get(
        &self,
        store: &dyn Store,
        tenant: &Tenant,
        id: Uuid,
    ) -> Result<Arc<Target>, StoreError> {
        let slot = self.slot(tenant.key(), id);
        slot.target
            .get_or_try_init(|| async { resolve(store, tenant, id).await.map(Arc::new) })
            .await
            .cloned()
    }

    /// The live slot of `(org, id)`, made if there is none.
    fn slot(&self, org: i64, id: Uuid) -> Arc<Slot> {
        let now = Instant::now();
        // A cache only: a panic elsewhere cannot leave it inconsistent.
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        if now.duration_since(slots.swept) >= self.ttl {
            let ttl = self.ttl;
            slots.map.retain(|_, s| now.duration_since(s.born) < ttl);
            slots.swept = now;
        }
        match slots.map.get(&(org, id)) {
            Some(slot) if now.duration_since(slot.born) < self.ttl => Arc::clone(slot),
            _ => {
                let slot = Arc::new(Slot {
                    born: now,
                    target: OnceCell::new(),
                });
                slots.map.insert((org, id), Arc::clone(&slot));
                slot
            }
        }
    }
}

/// Reads the destination and its credential from the store.
async fn resolve(store: &dyn Store, tenant: &Tenant, id: Uuid) -> Result<Target, StoreError> {
    let destination = match store.get_destination(tenant, id).await? {
        Some(d) if d.deleted_at.is_none() => d,
        _ => return Ok(Target::Gone),
    };
    let secret = match destination.credential_id {
        None => None,
        Some(credential) => match store.get_credential(tenant, credential).await? {
            Some(c) => Some(c.secret),
            None => {
                return Ok(Target::NoCredential {
                    signaling: destination.config.signaling,
                });
            }
        },
    };
    Ok(Target::Ready {
        destination,
        secret,
    })
}

#[cfg(test)]
mod tests {
    use apitrail_model::{Credential, WebhookConfig, new_record_id};
    use apitrail_store_sqlite::{SqliteOptions, SqliteStore};
    use apitrail_store_tests::support::{at, audit_entry, new_org};

    use super::*;

    fn destination(credential_id: Option<Uuid>, url: &str) -> Destination {
        Destination {
            id: new_record_id(),
            label: "receiver".into(),
            config: WebhookConfig {
                url: url.into(),
                headers: Default::default(),
                signaling: true,
                response_time_sla_ms: 1_000,
            },
            credential_id,
            tags: Default::default(),
            allow_private: None,
            created_at: at(0),
            updated_at: at(0),
            deleted_at: None,
        }
    }

    async fn put(store: &dyn Store, tenant: &Tenant, d: &Destination, create: bool) {
        let audit = audit_entry("put", "destination", &d.id.to_string(), d.updated_at);
        store
            .put_destination(tenant, d, create, &audit)
            .await
            .expect("put_destination");
    }

    fn url_of(target: &Target) -> Option<&str> {
        match target {
            Target::Ready { destination, .. } => Some(&destination.config.url),
            _ => None,
        }
    }

    /// An answer is kept for the TTL (a change is not seen), then read again (it is); with a
    /// zero TTL every call reads; a deleted destination is `Gone`, one whose credential does
    /// not exist `NoCredential`, and a destination is only ever found in its own org.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn destinations_are_kept_for_the_ttl_then_read_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open(dir.path(), SqliteOptions::default()).expect("open");
        let store: &dyn Store = &store;
        let (a, b) = (
            new_org(store, "cache-a").await,
            new_org(store, "cache-b").await,
        );
        let credential = Credential {
            id: new_record_id(),
            label: "signing".into(),
            secret: WebhookSecret::from_bytes(vec![7; 24]),
            created_at: at(0),
        };
        let audit = audit_entry("create", "credential", "c", at(0));
        store
            .create_credential(&a, &credential, &audit)
            .await
            .expect("create_credential");
        let mut d = destination(Some(credential.id), "https://one.example/hook");
        put(store, &a, &d, true).await;

        let ttl = Duration::from_millis(300);
        let targets = Targets::new(ttl);
        let first = targets.get(store, &a, d.id).await.expect("get");
        match &*first {
            Target::Ready {
                destination,
                secret,
            } => {
                assert_eq!(destination, &d);
                assert_eq!(secret.as_ref(), Some(&credential.secret));
            }
            other => panic!("a live destination with its credential: {other:?}"),
        }
        // Another org's destination of the same id is not this one.
        assert!(matches!(
            *targets.get(store, &b, d.id).await.expect("get"),
            Target::Gone
        ));

        let started = Instant::now();
        d.config.url = "https://two.example/hook".into();
        d.updated_at = at(1);
        put(store, &a, &d, false).await;
        let cached = targets.get(store, &a, d.id).await.expect("get");
        if started.elapsed() < ttl {
            assert_eq!(
                url_of(&cached),
                Some("https://one.example/hook"),
                "within the TTL the answer is the one read before"
            );
        }
        assert_eq!(
            url_of(
                &Targets::new(Duration::ZERO)
                    .get(store, &a, d.id)
                    .await
                    .expect("get")
            ),
            Some("https://two.example/hook"),
            "with no TTL every call reads the store"
        );
        tokio::time::sleep(ttl).await;
        assert_eq!(
            url_of(&targets.get(store, &a, d.id).await.expect("get")),
            Some("https://two.example/hook"),
            "after the TTL the change is seen"
        );

        let fresh = Targets::new(ttl);
        d.deleted_at = Some(at(2));
        put(store, &a, &d, false).await;
        assert!(matches!(
            *fresh.get(store, &a, d.id).await.expect("get"),
            Target::Gone
        ));
        let orphan = destination(Some(new_record_id()), "https://three.example/hook");
        put(store, &a, &orphan, true).await;
        assert!(matches!(
            *fresh.get(store, &a, orphan.id).await.expect("get"),
            Target::NoCredential { signaling: true }
        ));
        let unknown = new_record_id();
        assert!(matches!(
            *fresh.get(store, &a, unknown).await.expect("get"),
            Target::Gone
        ));
        store.shutdown().await.expect("shutdown");
    }
}

//! Story: the service shuts down.

use apitrail_model::{Org, Timestamp, new_record_id};
use apitrail_store::{Store, StoreError};

use crate::support::{LogGen, at, audit_entry, insert, new_key, new_org, org_id};

fn assert_closed<T: std::fmt::Debug>(result: Result<T, StoreError>, what: &str) {
    match result {
        Err(StoreError::Closed) => {}
        other => panic!("{what} after shutdown must be refused with Closed, got {other:?}"),
    }
}

/// After `shutdown` returns, every write is refused with `StoreError::Closed` (nothing is
/// queued that would never be committed), and a second `shutdown` is harmless.
pub async fn shutdown_refuses_new_writes(store: &dyn Store) {
    let a = new_org(store, "closing").await;
    let mut generator = LogGen::new(0xC105E, "a");
    insert(store, &a, &generator.logs(20)).await;
    let (key, secret) = new_key(&a, "late", at(1));
    store.ping().await.expect("ping before shutdown");

    store.shutdown().await.expect("shutdown");

    let logs = generator.logs(5);
    assert_closed(
        store
            .insert_request_logs(vec![apitrail_store::LogBatch::new(a.clone(), logs)])
            .await,
        "insert_request_logs",
    );
    let org = Org {
        id: org_id("too-late"),
        name: "Too late".into(),
        created_at: at(2),
    };
    assert_closed(
        store
            .create_org(&org, &audit_entry("create", "org", "too-late", at(2)))
            .await,
        "create_org",
    );
    assert_closed(
        store
            .create_api_key(
                &a,
                &key,
                &secret.hash(),
                &audit_entry("create", "api_key", "k", at(3)),
            )
            .await,
        "create_api_key",
    );
    assert_closed(
        store
            .revoke_api_key(
                &a,
                new_record_id(),
                at(4),
                &audit_entry("revoke", "api_key", "k", at(4)),
            )
            .await,
        "revoke_api_key",
    );
    assert_closed(
        store.touch_api_keys(vec![(key.id, Timestamp::now())]).await,
        "touch_api_keys",
    );
    store
        .shutdown()
        .await
        .expect("a second shutdown is harmless");
}

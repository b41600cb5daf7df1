//! Behaviour specific to the PostgreSQL backend: several servers starting together on one
//! empty database migrate it once; a database from a newer apitrail is refused.

#![allow(clippy::unwrap_used)]

use apitrail_pgtest::PgServer;
use apitrail_store::{Store, StoreError};
use apitrail_store_postgres::{PgOptions, PgStore};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_starting_together_migrate_once() {
    let url = PgServer::shared().fresh_database().await;
    let starting: Vec<_> = (0..6)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { PgStore::connect(&url, PgOptions::default()).await })
        })
        .collect();
    for start in starting {
        start.await.unwrap().unwrap().ping().await.unwrap();
    }
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let rows = client
        .query("SELECT version FROM apitrail_schema", &[])
        .await
        .unwrap();
    assert_eq!(rows.len(), 1, "one bookkeeping row");
    let migrations = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations"))
        .unwrap()
        .count();
    assert_eq!(
        rows[0].get::<_, i32>(0) as usize,
        migrations,
        "every migration applied"
    );

    // A version this build does not know is refused with a clear message.
    client
        .execute("UPDATE apitrail_schema SET version = 99", &[])
        .await
        .unwrap();
    match PgStore::connect(&url, PgOptions::default()).await {
        Err(StoreError::Backend(e)) => assert!(e.to_string().contains("newer"), "{e}"),
        other => panic!("a newer schema must be refused, got {other:?}"),
    }
}

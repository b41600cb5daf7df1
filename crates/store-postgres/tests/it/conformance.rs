//! The backend conformance suite (`apitrail-store-tests`), run against a real PostgreSQL
//! server that the harness (`apitrail-pgtest`) starts from the installed binaries; each story
//! gets a fresh database.

#![allow(clippy::unwrap_used)]

use apitrail_pgtest::PgServer;
use apitrail_store_postgres::{PgOptions, PgStore};

async fn fresh_store() -> Box<PgStore> {
    let url = PgServer::shared().fresh_database().await;
    Box::new(PgStore::connect(&url, PgOptions::default()).await.unwrap())
}

apitrail_store_tests::store_conformance!(fresh_store());

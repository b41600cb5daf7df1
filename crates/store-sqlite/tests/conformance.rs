//! The backend conformance suite (`apitrail-store-tests`), run against SQLite.

#![allow(clippy::unwrap_used)]

use std::ops::Deref;

use apitrail_store::Store;
use apitrail_store_sqlite::{SqliteOptions, SqliteStore};
use tempfile::TempDir;

/// A store in its own temporary directory, removed when the store is dropped.
#[derive(Debug)]
struct TempStore {
    // Declared first so it is dropped (and its files closed) before the directory goes.
    store: SqliteStore,
    _dir: TempDir,
}

impl Deref for TempStore {
    type Target = dyn Store;

    fn deref(&self) -> &Self::Target {
        &self.store
    }
}

async fn fresh_store() -> TempStore {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path(), SqliteOptions::default()).unwrap();
    TempStore { store, _dir: dir }
}

apitrail_store_tests::store_conformance!(fresh_store());

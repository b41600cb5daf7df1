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

async fn fresh_store_with(options: SqliteOptions) -> TempStore {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path(), options).unwrap();
    TempStore { store, _dir: dir }
}

async fn fresh_store() -> TempStore {
    fresh_store_with(SqliteOptions::default()).await
}

apitrail_store_tests::store_conformance!(fresh_store());

/// The whole suite again with tiny level caps, so that the leveled side keys (duration,
/// request id) move between levels after almost every write: every story then runs while
/// rows are spread over all three levels and moving.
mod moving_levels {
    use super::*;
    use apitrail_store_sqlite::LevelCaps;

    async fn fresh_store() -> TempStore {
        fresh_store_with(SqliteOptions {
            level_caps: LevelCaps {
                l0: 7,
                l1: 40,
                chunk: 13,
            },
            ..SqliteOptions::default()
        })
        .await
    }

    apitrail_store_tests::store_conformance!(fresh_store());
}

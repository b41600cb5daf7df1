//! Reading: a small pool of read-only connections ([`Readers`]), and the statement helpers
//! every module runs its SQL through ([`Sql`]). In WAL mode readers never block the writer
//! nor each other; each query runs on a blocking thread so the async runtime never waits on
//! SQLite.

use std::sync::{Arc, Mutex};

use apitrail_store::StoreError;
use rusqlite::{Connection, Params, Row};
use tokio::sync::Semaphore;

use crate::backend;
use crate::writer::WriterError;

/// The pool. Connections are taken and returned inside the blocking task itself, so a caller
/// that stops waiting (a dropped request) never leaks one.
#[derive(Debug)]
pub(crate) struct Readers {
    idle: Mutex<Vec<Connection>>,
    permits: Arc<Semaphore>,
}

impl Readers {
    /// A pool over `conns`.
    pub fn new(conns: Vec<Connection>) -> Arc<Self> {
        Arc::new(Self {
            permits: Arc::new(Semaphore::new(conns.len())),
            idle: Mutex::new(conns),
        })
    }

    /// Runs `f` on an idle connection.
    pub async fn run<T, F>(self: &Arc<Self>, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let permit = Arc::clone(&self.permits)
            .acquire_owned()
            .await
            .map_err(|_| StoreError::Closed)?;
        let pool = Arc::clone(self);
        let task = tokio::task::spawn_blocking(move || {
            let conn = pool.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
            let Some(conn) = conn else {
                return Err(StoreError::backend(WriterError(
                    "reader pool is empty although a permit was granted".into(),
                )));
            };
            // The lease hands the connection back even if `f` panics; the permit is
            // released after it, so a granted permit always finds a connection.
            let lease = Lease {
                conn: Some(conn),
                pool,
                _permit: permit,
            };
            match lease.conn.as_ref() {
                Some(conn) => f(conn),
                None => Err(StoreError::Closed),
            }
        });
        task.await
            .map_err(|e| StoreError::backend(WriterError(format!("reader task failed: {e}"))))?
    }
}

struct Lease {
    conn: Option<Connection>,
    pool: Arc<Readers>,
    // Declared last so it drops after the connection is back in the pool.
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            self.pool
                .idle
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(conn);
        }
    }
}

/// Statements answered in the store's error type ([`backend`] maps SQLite's), each prepared
/// once per connection (`prepare_cached`); `all`, `opt` and `one` also decode the rows.
pub(crate) trait Sql {
    /// The connection the statements run on.
    fn connection(&self) -> &Connection;

    /// The rows of `sql`, each decoded by `decode`.
    fn all<T>(
        &self,
        sql: &str,
        params: impl Params,
        decode: impl FnMut(&Row<'_>) -> rusqlite::Result<T>,
    ) -> Result<Vec<T>, StoreError> {
        self.connection()
            .prepare_cached(sql)
            .and_then(|mut st| st.query_map(params, decode)?.collect())
            .map_err(backend)
    }

    /// The row of `sql` if any (the first), decoded by `decode`.
    fn opt<T>(
        &self,
        sql: &str,
        params: impl Params,
        decode: impl FnOnce(&Row<'_>) -> rusqlite::Result<T>,
    ) -> Result<Option<T>, StoreError> {
        use rusqlite::OptionalExtension;
        self.connection()
            .prepare_cached(sql)
            .and_then(|mut st| st.query_row(params, decode).optional())
            .map_err(backend)
    }

    /// The first row of `sql`, which must have one, decoded by `decode`.
    fn one<T>(
        &self,
        sql: &str,
        params: impl Params,
        decode: impl FnOnce(&Row<'_>) -> rusqlite::Result<T>,
    ) -> Result<T, StoreError> {
        self.connection()
            .prepare_cached(sql)
            .and_then(|mut st| st.query_row(params, decode))
            .map_err(backend)
    }

    /// Runs `sql`; returns how many rows it changed.
    fn exec(&self, sql: &str, params: impl Params) -> Result<usize, StoreError> {
        self.connection()
            .prepare_cached(sql)
            .and_then(|mut st| st.execute(params))
            .map_err(backend)
    }
}

impl Sql for Connection {
    fn connection(&self) -> &Connection {
        self
    }
}

//! A small pool of read-only connections. In WAL mode readers never block the writer nor each
//! other; each query runs on a blocking thread so the async runtime never waits on SQLite.

use std::sync::{Arc, Mutex};

use apitrail_store::StoreError;
use rusqlite::Connection;
use tokio::sync::Semaphore;

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

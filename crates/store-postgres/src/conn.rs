//! Connections that reopen themselves.
//!
//! PostgreSQL closes its connections for good when it restarts or fails over, when a backend
//! is terminated (`pg_terminate_backend`), or when the network drops them; a closed client
//! cannot be revived. So every pool of the store (readers, writers, volatile writers, log
//! writers) holds its connections in [`Conn`]s, and whoever picks one whose client is closed
//! opens a new one with the pool's session settings. The store thus recovers by itself as
//! soon as the database answers again, without a restart of the server.

use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::{Mutex, OwnedMutexGuard};
use tokio_postgres::{Client, NoTls};

use crate::reader::Reader;
use apitrail_store::StoreError;

/// The session of every connection. No JIT: every statement here reads or writes a page of
/// rows, and a generic plan's estimates over a month of day partitions crossed the JIT
/// threshold, which made the status-run statement spend ~300 ms compiling expressions for a
/// 3 ms query.
pub(crate) const PLAIN: &str = "SET jit = off";
/// The session of read connections: their prepared statements keep one generic plan, which
/// prunes day partitions at execution (see [`Reader`]).
pub(crate) const READER: &str = "SET jit = off; SET plan_cache_mode = force_generic_plan";
/// The session of volatile writers, which run only the dispatcher's statements (leases and
/// delivery outcomes): commits do not wait for the WAL flush (see
/// `PgStore::volatile_writers`), and the lease query walks the due index in `available_at`
/// order. With bitmap scans and sorts off, that ordered index scan is the only plan without a
/// disabled node, so a lease stops after `limit` due rows and, being a plain index scan,
/// marks the entries of dead row versions it passes as dead, so later scans skip them. The
/// planner otherwise chose (from estimates of a few due rows) a bitmap scan of every entry
/// up to now plus a sort: ~21 ms per lease with 17,000 records due, and, between vacuums,
/// a heap visit for every dead version still indexed (7,400 entries, 484 pages per lease in
/// the benchmark's lag run), which a bitmap scan never marks dead. No other statement runs
/// on these connections needs either (outcomes update by primary key).
pub(crate) const VOLATILE: &str = "SET jit = off; SET synchronous_commit = off; \
     SET enable_bitmapscan = off; SET enable_sort = off";

/// How long opening a connection may take before the attempt counts as failed: a database
/// host that does not answer at all would otherwise hold callers for the TCP timeout.
const OPEN_TIMEOUT: Duration = Duration::from_secs(2);
/// After a failed attempt, a [`Conn`] answers with that failure for this long instead of
/// trying again: callers fail fast while the database is down, and it is not flooded with
/// connection attempts when it comes back. It bounds how long recovery can lag behind.
const RETRY_AFTER: Duration = Duration::from_millis(250);

/// tokio-postgres's default TCP keepalive idle time (libpq's, and the kernel's), which the
/// URL's `keepalives_idle` overrides.
const LIBPQ_KEEPALIVES_IDLE: Duration = Duration::from_secs(2 * 60 * 60);
/// The keepalive settings used where the URL leaves the defaults: a dead peer is noticed
/// after about a minute (30 s idle, then 3 probes 10 s apart).
const KEEPALIVES_IDLE: Duration = Duration::from_secs(30);
const KEEPALIVES_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVES_RETRIES: u32 = 3;

/// The connection settings of `url`, with TCP keepalives tightened where it leaves them at
/// their defaults: a connection whose peer vanished without closing it (a failover, a dropped
/// network path) is otherwise only noticed when TCP gives up, after more than two hours.
pub(crate) fn config(url: &str) -> Result<tokio_postgres::Config, tokio_postgres::Error> {
    let mut config: tokio_postgres::Config = url.parse()?;
    if config.get_keepalives_idle() == LIBPQ_KEEPALIVES_IDLE {
        config.keepalives_idle(KEEPALIVES_IDLE);
    }
    if config.get_keepalives_interval().is_none() {
        config.keepalives_interval(KEEPALIVES_INTERVAL);
    }
    if config.get_keepalives_retries().is_none() {
        config.keepalives_retries(KEEPALIVES_RETRIES);
    }
    Ok(config)
}

/// Opens a connection to `url` and runs `session` (one of [`PLAIN`], [`READER`],
/// [`VOLATILE`]) on it.
pub(crate) async fn connect(url: &str, session: &str) -> Result<Client, StoreError> {
    try_connect(url, session)
        .await
        .map_err(|e| match e.as_db_error() {
            // The server answered and refused (bad password, no such database): not a blip.
            Some(_) => StoreError::backend(e),
            None => StoreError::unavailable(e),
        })
}

async fn try_connect(url: &str, session: &str) -> Result<Client, tokio_postgres::Error> {
    let (client, connection) = config(url)?.connect(NoTls).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(error = %e, "PostgreSQL connection closed");
        }
    });
    client.batch_execute(session).await?;
    Ok(client)
}

/// No connection could be opened; the message says why (with its causes, which the
/// tokio-postgres error alone does not print).
#[derive(Debug, thiserror::Error)]
#[error("cannot reopen a PostgreSQL connection: {0}")]
struct Unreachable(Arc<str>);

/// One connection of a pool: the URL and session it is opened with, and the current client,
/// replaced by a new one when found closed.
///
/// `C` is how the pool shares the client: a [`Reader`], which concurrent calls pipeline on,
/// or a `Mutex<Client>`, which one transaction holds at a time. Either way callers take an
/// `Arc` of the current one, so a replacement never pulls a client from under a statement.
/// One reopening is in flight at a time per `Conn` (callers arriving meanwhile wait for it
/// and take its result), and a failed one is not retried for [`RETRY_AFTER`].
#[derive(Debug)]
pub(crate) struct Conn<C> {
    url: Arc<str>,
    session: &'static str,
    current: std::sync::RwLock<Arc<C>>,
    /// Held while reopening; the time and cause of the last failed attempt.
    failed: Mutex<Option<(Instant, Arc<str>)>>,
}

impl<C: From<Client>> Conn<C> {
    /// Opens the first client.
    pub(crate) async fn open(url: &Arc<str>, session: &'static str) -> Result<Self, StoreError> {
        let client = connect(url, session).await?;
        Ok(Self {
            url: Arc::clone(url),
            session,
            current: std::sync::RwLock::new(Arc::new(C::from(client))),
            failed: Mutex::new(None),
        })
    }

    /// The current client, closed or not.
    pub(crate) fn current(&self) -> Arc<C> {
        // Only ever holds a complete Arc: a panic elsewhere cannot leave it inconsistent.
        Arc::clone(&self.current.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Replaces `closed` (a client of this `Conn` found closed or lost) with a new one,
    /// unless that was done meanwhile; returns the current client. Fails without trying when
    /// the last attempt failed less than [`RETRY_AFTER`] ago.
    async fn reopen(&self, closed: &Arc<C>) -> Result<Arc<C>, StoreError> {
        let mut failed = self.failed.lock().await;
        let current = self.current();
        if !Arc::ptr_eq(&current, closed) {
            return Ok(current);
        }
        if let Some((at, why)) = &*failed
            && at.elapsed() < RETRY_AFTER
        {
            return Err(StoreError::unavailable(Unreachable(Arc::clone(why))));
        }
        let opened = tokio::time::timeout(OPEN_TIMEOUT, try_connect(&self.url, self.session)).await;
        match opened {
            Ok(Ok(client)) => {
                let fresh = Arc::new(C::from(client));
                *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::clone(&fresh);
                *failed = None;
                tracing::info!("reopened a PostgreSQL connection");
                Ok(fresh)
            }
            Ok(Err(e)) => Err(Self::failed(&mut failed, causes(&e))),
            Err(_) => Err(Self::failed(
                &mut failed,
                format!("no connection within {OPEN_TIMEOUT:?}"),
            )),
        }
    }

    /// Records a failed attempt in `last` (the `failed` field, locked).
    fn failed(last: &mut Option<(Instant, Arc<str>)>, why: String) -> StoreError {
        tracing::warn!(error = %why, "cannot reopen a PostgreSQL connection");
        let why: Arc<str> = why.into();
        *last = Some((Instant::now(), Arc::clone(&why)));
        StoreError::unavailable(Unreachable(why))
    }
}

impl Conn<Reader> {
    /// The read connection, reopened first if it is closed.
    pub(crate) async fn reader(&self) -> Result<Arc<Reader>, StoreError> {
        let reader = self.current();
        if reader.client.is_closed() {
            self.reopen(&reader).await
        } else {
            Ok(reader)
        }
    }
}

impl Conn<Mutex<Client>> {
    /// The client, locked, if no one holds it (it may be closed: see [`Conn::live`]).
    pub(crate) fn try_lock(&self) -> Option<OwnedMutexGuard<Client>> {
        self.current().try_lock_owned().ok()
    }

    /// The client, locked once its holder is done, and reopened first if it is closed.
    pub(crate) async fn lock(&self) -> Result<OwnedMutexGuard<Client>, StoreError> {
        let client = self.current().lock_owned().await;
        self.live(client).await
    }

    /// `client` (this `Conn`'s, locked), or the new one that replaces it if it is closed.
    pub(crate) async fn live(
        &self,
        client: OwnedMutexGuard<Client>,
    ) -> Result<OwnedMutexGuard<Client>, StoreError> {
        if client.is_closed() {
            self.replace(client).await
        } else {
            Ok(client)
        }
    }

    /// Replaces `client` (this `Conn`'s, locked, known to be lost even if it does not say
    /// so yet) with a new one, locked.
    pub(crate) async fn replace(
        &self,
        client: OwnedMutexGuard<Client>,
    ) -> Result<OwnedMutexGuard<Client>, StoreError> {
        let lost = Arc::clone(OwnedMutexGuard::mutex(&client));
        drop(client);
        Ok(self.reopen(&lost).await?.lock_owned().await)
    }
}

/// Whether `e` ended the session it came from: [`crate::backend`] makes a closed
/// connection, and a FATAL error (PostgreSQL sends one as it closes a session: a terminated
/// backend, a shutdown; the client may report it before it has seen the socket close),
/// [`StoreError::Unavailable`].
pub(crate) fn ended_session(e: &StoreError) -> bool {
    matches!(e, StoreError::Unavailable(_))
}

/// An error with its sources: tokio-postgres's own message is only "error connecting to
/// server" or "db error".
fn causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text = format!("{text}: {cause}");
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keepalives_are_tightened_unless_the_url_sets_them() {
        let tight = config("postgres://u@db.example/apitrail").expect("url");
        assert_eq!(tight.get_keepalives_idle(), KEEPALIVES_IDLE);
        assert_eq!(tight.get_keepalives_interval(), Some(KEEPALIVES_INTERVAL));
        assert_eq!(tight.get_keepalives_retries(), Some(KEEPALIVES_RETRIES));
        let own = config(
            "postgres://u@db.example/apitrail?keepalives_idle=600&keepalives_interval=5&keepalives_retries=9",
        )
        .expect("url");
        assert_eq!(own.get_keepalives_idle(), Duration::from_secs(600));
        assert_eq!(own.get_keepalives_interval(), Some(Duration::from_secs(5)));
        assert_eq!(own.get_keepalives_retries(), Some(9));
    }
}

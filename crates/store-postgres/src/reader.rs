//! Reading: the read connection with its statement cache ([`Reader`]), and the statement
//! helpers every module runs its SQL through ([`Sql`]).

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use apitrail_store::StoreError;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, GenericClient, Row, Statement};

use crate::backend;

/// A read connection that keeps the request-log statements it has run prepared.
///
/// A statement planned anew for every call plans every day partition (~0.1 ms each; 3-4 ms
/// for a month of days), where a prepared statement's generic plan is made once and prunes
/// partitions at execution from its parameters. Readers run with `plan_cache_mode =
/// force_generic_plan`, which only prepared statements heed. A prepared statement lives in
/// its connection, so a reader made for a new connection starts with an empty cache.
#[derive(Debug)]
pub(crate) struct Reader {
    pub(crate) client: Client,
    /// Each statement with the time it was prepared.
    statements: Mutex<HashMap<String, (Statement, Instant)>>,
}

impl From<Client> for Reader {
    fn from(client: Client) -> Self {
        Self {
            client,
            statements: Mutex::new(HashMap::new()),
        }
    }
}

impl Reader {
    /// Statements kept per connection at most; the list query has a few hundred shapes.
    const MAX_STATEMENTS: usize = 2_000;

    /// How long a prepared statement (and so its generic plan) is kept. A generic plan is
    /// made from the statistics of the moment it is first run: one made while the newest day
    /// was nearly empty or not yet analyzed (just after midnight UTC, or right after a burst
    /// of ingest) may read that day by a bitmap scan and a sort, which grows with the day.
    /// Preparing again now and then lets plans follow the statistics.
    const PLAN_TTL: Duration = Duration::from_secs(300);

    /// Runs `sql` as a prepared statement, preparing it on first use and again once it is
    /// older than [`Reader::PLAN_TTL`].
    pub(crate) async fn prepared(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, StoreError> {
        let cached = self
            .cache()
            .get(sql)
            .filter(|(_, prepared)| prepared.elapsed() < Self::PLAN_TTL)
            .map(|(st, _)| st.clone());
        let statement = match cached {
            Some(st) => st,
            None => {
                let st = self.client.prepare(sql).await.map_err(backend)?;
                let mut cache = self.cache();
                if cache.len() < Self::MAX_STATEMENTS || cache.contains_key(sql) {
                    // Replacing drops the old statement, which closes it on the server.
                    cache.insert(sql.to_owned(), (st.clone(), Instant::now()));
                }
                st
            }
        };
        self.client.query(&statement, params).await.map_err(backend)
    }

    fn cache(&self) -> MutexGuard<'_, HashMap<String, (Statement, Instant)>> {
        // A cache only: a panic elsewhere cannot leave it inconsistent.
        self.statements
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// Statements answered in the store's error type ([`backend`] maps the database's), on any
/// client or transaction; `all` and `opt` also decode the rows.
pub(crate) trait Sql: GenericClient + Sync {
    /// The rows of `sql`.
    fn rows(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> impl Future<Output = Result<Vec<Row>, StoreError>> + Send {
        async move { self.query(sql, params).await.map_err(backend) }
    }

    /// The one row of `sql`.
    fn row(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> impl Future<Output = Result<Row, StoreError>> + Send {
        async move { self.query_one(sql, params).await.map_err(backend) }
    }

    /// The row of `sql`, if any (more than one is an error).
    fn opt_row(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> impl Future<Output = Result<Option<Row>, StoreError>> + Send {
        async move { self.query_opt(sql, params).await.map_err(backend) }
    }

    /// Runs `sql`; returns how many rows it changed.
    fn exec(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> impl Future<Output = Result<u64, StoreError>> + Send {
        async move { self.execute(sql, params).await.map_err(backend) }
    }

    /// Runs `sql`, which may hold several statements, without parameters.
    fn batch(&self, sql: &str) -> impl Future<Output = Result<(), StoreError>> + Send {
        async move { self.batch_execute(sql).await.map_err(backend) }
    }

    /// The rows of `sql`, each decoded by `decode`.
    fn all<T: Send>(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
        decode: impl Fn(&Row) -> Result<T, StoreError> + Send,
    ) -> impl Future<Output = Result<Vec<T>, StoreError>> + Send {
        async move { self.rows(sql, params).await?.iter().map(decode).collect() }
    }

    /// The row of `sql` if any, decoded by `decode`.
    fn opt<T: Send>(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
        decode: impl Fn(&Row) -> Result<T, StoreError> + Send,
    ) -> impl Future<Output = Result<Option<T>, StoreError>> + Send {
        async move {
            self.opt_row(sql, params)
                .await?
                .as_ref()
                .map(decode)
                .transpose()
        }
    }
}

impl<C: GenericClient + Sync> Sql for C {}

//! The PostgreSQL backend.
//!
//! One database, shared by any number of `apitrail serve` processes. Reads are pipelined over
//! a few shared connections; writes run in transactions on a small set of writer connections.
//! Migrations run at start-up under an advisory lock, so servers starting together migrate
//! once. Each org's audit chain is serialized by a row lock on its head, which holds across
//! servers. See `ARCHITECTURE.md`.
//!
//! Work in progress (issue #5): ingest uses one multi-row statement per batch (no COPY, no
//! group commit yet) and request logs are not partitioned by time yet.

mod actions;
mod audit;
mod orgs;
mod request_logs;
mod schema;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use apitrail_model::{
    ApiKey, AuditAfter, AuditEntry, AuditFilter, ChainHead, ChainLink, LogFilter, Org, OrgId,
    PageRequest, RequestLog, SecretHash, Sort, Tenant, Timestamp,
};
use apitrail_store::{
    AuditBatch, Histogram, InsertOutcome, LogBatch, Page, Store, StoreError, StoreStats,
};
use async_trait::async_trait;
use tokio::sync::{Mutex, MutexGuard, OwnedRwLockReadGuard, RwLock};
use tokio_postgres::{Client, NoTls};
use uuid::Uuid;

/// Tuning of the PostgreSQL backend.
#[derive(Debug, Clone)]
pub struct PgOptions {
    /// Connections shared by reads (queries are pipelined on each).
    pub readers: usize,
    /// Connections that run write transactions, one transaction at a time each.
    pub writers: usize,
    /// Records that may be in flight (waiting for or inside a write) before ingest is refused
    /// with `Overloaded`.
    pub queue_capacity: usize,
}

impl Default for PgOptions {
    fn default() -> Self {
        Self {
            readers: 2,
            writers: 4,
            queue_capacity: 200_000,
        }
    }
}

/// The PostgreSQL-backed [`Store`].
#[derive(Debug)]
pub struct PgStore {
    readers: Vec<Client>,
    next_reader: AtomicUsize,
    writers: Vec<Mutex<Client>>,
    next_writer: AtomicUsize,
    /// `false` once shut down; writes hold a read guard while they run, so shutdown (which
    /// takes the write lock) waits for them.
    open: Arc<RwLock<bool>>,
    queued: AtomicUsize,
    capacity: usize,
    commits: AtomicU64,
    committed_records: AtomicU64,
    commit_seconds: Histogram,
    group_records: Histogram,
}

/// Records admitted to the write path; released when dropped.
struct Admitted<'a> {
    queued: &'a AtomicUsize,
    records: usize,
}

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        self.queued.fetch_sub(self.records, Ordering::AcqRel);
    }
}

pub(crate) fn backend(e: tokio_postgres::Error) -> StoreError {
    StoreError::backend(e)
}

/// A stored value the model refuses: the database was altered by something else.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct Corrupt(pub String);

pub(crate) fn corrupt(msg: String) -> StoreError {
    StoreError::backend(Corrupt(msg))
}

/// Parameters of a statement built at run time.
pub(crate) type Args = Vec<Box<dyn tokio_postgres::types::ToSql + Sync + Send>>;

/// Adds a parameter; returns its placeholder (`$n`).
pub(crate) fn push(
    args: &mut Args,
    v: impl tokio_postgres::types::ToSql + Sync + Send + 'static,
) -> String {
    args.push(Box::new(v));
    format!("${}", args.len())
}

/// The parameters as tokio-postgres takes them.
pub(crate) fn params(args: &Args) -> Vec<&(dyn tokio_postgres::types::ToSql + Sync)> {
    args.iter()
        .map(|a| a.as_ref() as &(dyn tokio_postgres::types::ToSql + Sync))
        .collect()
}

pub(crate) fn ts(ms: i64) -> Result<Timestamp, StoreError> {
    Timestamp::from_millis(ms).ok_or_else(|| corrupt(format!("timestamp {ms} out of range")))
}

/// Starts a write transaction at READ COMMITTED whatever the database's default: the audit
/// append relies on it (after `FOR UPDATE` on the head row it must see what the previous
/// holder committed), and no write here needs more.
async fn begin(client: &mut Client) -> Result<tokio_postgres::Transaction<'_>, StoreError> {
    client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::ReadCommitted)
        .start()
        .await
        .map_err(backend)
}

async fn connect(url: &str) -> Result<Client, StoreError> {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await.map_err(backend)?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(error = %e, "PostgreSQL connection closed");
        }
    });
    Ok(client)
}

impl PgStore {
    /// Connects to `url` (`postgres://...`), migrating the schema. Must be called within a
    /// Tokio runtime (each connection runs as a task).
    pub async fn connect(url: &str, options: PgOptions) -> Result<Self, StoreError> {
        let mut first = connect(url).await?;
        schema::migrate(&mut first).await?;
        let mut readers = vec![first];
        for _ in 1..options.readers.max(1) {
            readers.push(connect(url).await?);
        }
        let mut writers = Vec::new();
        for _ in 0..options.writers.max(1) {
            writers.push(Mutex::new(connect(url).await?));
        }
        Ok(Self {
            readers,
            next_reader: AtomicUsize::new(0),
            writers,
            next_writer: AtomicUsize::new(0),
            open: Arc::new(RwLock::new(true)),
            queued: AtomicUsize::new(0),
            capacity: options.queue_capacity,
            commits: AtomicU64::new(0),
            committed_records: AtomicU64::new(0),
            commit_seconds: Histogram::new(Histogram::SECONDS),
            group_records: Histogram::new(Histogram::RECORDS),
        })
    }

    /// Admits `records` to the write path, or refuses them when that would exceed the
    /// capacity (so ingest answers 503 instead of queueing without bound).
    fn admit(&self, records: usize) -> Result<Admitted<'_>, StoreError> {
        apitrail_store::admit(&self.queued, records, self.capacity)?;
        Ok(Admitted {
            queued: &self.queued,
            records,
        })
    }

    /// Counts a committed write transaction of `records` records that began at `started`.
    fn committed(&self, records: usize, started: Instant) {
        self.commits.fetch_add(1, Ordering::Relaxed);
        self.committed_records
            .fetch_add(records as u64, Ordering::Relaxed);
        self.commit_seconds.observe(started.elapsed().as_secs_f64());
        self.group_records.observe(records as f64);
    }

    fn reader(&self) -> &Client {
        let i = self.next_reader.fetch_add(1, Ordering::Relaxed) % self.readers.len();
        &self.readers[i]
    }

    /// A permit to write (refused once shut down) and an idle writer connection.
    async fn writer(
        &self,
    ) -> Result<(OwnedRwLockReadGuard<bool>, MutexGuard<'_, Client>), StoreError> {
        let open = Arc::clone(&self.open).read_owned().await;
        if !*open {
            return Err(StoreError::Closed);
        }
        let start = self.next_writer.fetch_add(1, Ordering::Relaxed);
        let n = self.writers.len();
        for i in 0..n {
            if let Ok(client) = self.writers[(start + i) % n].try_lock() {
                return Ok((open, client));
            }
        }
        Ok((open, self.writers[start % n].lock().await))
    }
}

#[async_trait]
impl Store for PgStore {
    async fn ping(&self) -> Result<(), StoreError> {
        self.reader()
            .simple_query("SELECT 1")
            .await
            .map(drop)
            .map_err(backend)
    }

    async fn create_org(&self, org: &Org, audit: &AuditEntry) -> Result<Tenant, StoreError> {
        let started = Instant::now();
        let (_open, mut client) = self.writer().await?;
        let tx = begin(&mut client).await?;
        let tenant = orgs::insert_org(&tx, org).await?;
        audit::append(
            &tx,
            tenant.key(),
            tenant.org_id(),
            std::slice::from_ref(audit),
        )
        .await?;
        tx.commit().await.map_err(backend)?;
        self.committed(0, started);
        Ok(tenant)
    }

    async fn list_orgs(&self, after: Option<&OrgId>, limit: u32) -> Result<Page<Org>, StoreError> {
        orgs::list_orgs(self.reader(), after, limit).await
    }

    async fn tenant(&self, id: &OrgId) -> Result<Option<Tenant>, StoreError> {
        orgs::find_tenant(self.reader(), id).await
    }

    async fn org(&self, tenant: &Tenant) -> Result<Org, StoreError> {
        orgs::get_org(self.reader(), tenant.key()).await
    }

    async fn create_api_key(
        &self,
        tenant: &Tenant,
        key: &ApiKey,
        hash: &SecretHash,
        audit: &AuditEntry,
    ) -> Result<(), StoreError> {
        let started = Instant::now();
        let (_open, mut client) = self.writer().await?;
        let tx = begin(&mut client).await?;
        orgs::insert_key(&tx, tenant.key(), key, hash).await?;
        audit::append(
            &tx,
            tenant.key(),
            tenant.org_id(),
            std::slice::from_ref(audit),
        )
        .await?;
        tx.commit().await.map_err(backend)?;
        self.committed(0, started);
        Ok(())
    }

    async fn list_api_keys(&self, tenant: &Tenant) -> Result<Vec<ApiKey>, StoreError> {
        orgs::list_keys(self.reader(), tenant).await
    }

    async fn get_api_key(&self, tenant: &Tenant, id: Uuid) -> Result<Option<ApiKey>, StoreError> {
        orgs::get_key(self.reader(), tenant, id).await
    }

    async fn revoke_api_key(
        &self,
        tenant: &Tenant,
        id: Uuid,
        at: Timestamp,
        audit: &AuditEntry,
    ) -> Result<Option<ApiKey>, StoreError> {
        let started = Instant::now();
        let (_open, mut client) = self.writer().await?;
        let tx = begin(&mut client).await?;
        if orgs::revoke_key(&tx, tenant.key(), id, at).await? {
            audit::append(
                &tx,
                tenant.key(),
                tenant.org_id(),
                std::slice::from_ref(audit),
            )
            .await?;
        }
        let key = orgs::get_key(&tx, tenant, id).await?;
        tx.commit().await.map_err(backend)?;
        self.committed(0, started);
        Ok(key)
    }

    async fn authenticate(
        &self,
        hash: &SecretHash,
    ) -> Result<Option<(Tenant, ApiKey)>, StoreError> {
        orgs::authenticate(self.reader(), hash).await
    }

    async fn touch_api_keys(&self, used: Vec<(Uuid, Timestamp)>) -> Result<(), StoreError> {
        let (_open, client) = self.writer().await?;
        orgs::touch_keys(&*client, &used).await
    }

    async fn insert_request_logs(
        &self,
        batches: Vec<LogBatch>,
    ) -> Result<InsertOutcome, StoreError> {
        let records = batches.iter().map(|b| b.logs.len()).sum();
        let _admitted = self.admit(records)?;
        let mut batches = batches;
        // Orgs in a fixed order (and ids sorted within each, see `insert`), so that concurrent
        // batches lock rows in the same order.
        batches.sort_by_key(|b| b.tenant.key());
        let started = Instant::now();
        let (_open, mut client) = self.writer().await?;
        let tx = begin(&mut client).await?;
        let mut outcome = InsertOutcome::default();
        for batch in &batches {
            let stored = request_logs::insert(&tx, batch.tenant.key(), &batch.logs).await?;
            outcome.accepted += stored;
            outcome.duplicates += batch.logs.len() as u64 - stored;
        }
        tx.commit().await.map_err(backend)?;
        self.committed(records, started);
        Ok(outcome)
    }

    async fn list_request_logs(
        &self,
        tenant: &Tenant,
        filter: &LogFilter,
        sort: Sort,
        page: PageRequest,
    ) -> Result<Page<RequestLog>, StoreError> {
        request_logs::list(self.reader(), tenant.key(), filter, sort, page).await
    }

    async fn get_request_log(
        &self,
        tenant: &Tenant,
        id: Uuid,
    ) -> Result<Option<RequestLog>, StoreError> {
        request_logs::get(self.reader(), tenant.key(), id).await
    }

    async fn list_audit_entries(
        &self,
        tenant: &Tenant,
        filter: &AuditFilter,
        after: Option<AuditAfter>,
        limit: u32,
    ) -> Result<Page<AuditEntry>, StoreError> {
        audit::list(self.reader(), tenant.key(), filter, after, limit).await
    }

    async fn insert_audit_entries(
        &self,
        batches: Vec<AuditBatch>,
    ) -> Result<InsertOutcome, StoreError> {
        let records = batches.iter().map(|b| b.entries.len()).sum();
        let _admitted = self.admit(records)?;
        let mut batches = batches;
        // Org heads locked in a fixed order, so concurrent multi-org batches cannot deadlock.
        batches.sort_by_key(|b| b.tenant.key());
        let started = Instant::now();
        let (_open, mut client) = self.writer().await?;
        let tx = begin(&mut client).await?;
        let mut outcome = InsertOutcome::default();
        for b in &batches {
            let stored = audit::append(&tx, b.tenant.key(), b.tenant.org_id(), &b.entries).await?;
            outcome.accepted += stored;
            outcome.duplicates += b.entries.len() as u64 - stored;
        }
        tx.commit().await.map_err(backend)?;
        self.committed(records, started);
        Ok(outcome)
    }

    async fn audit_chain(
        &self,
        tenant: &Tenant,
        after: u64,
        limit: u32,
    ) -> Result<Vec<ChainLink>, StoreError> {
        audit::chain(self.reader(), tenant.key(), after, limit).await
    }

    async fn audit_chain_head(&self, tenant: &Tenant) -> Result<ChainHead, StoreError> {
        audit::head(self.reader(), tenant.key()).await
    }

    async fn purge_request_logs(
        &self,
        tenant: &Tenant,
        before: Timestamp,
        max: u32,
    ) -> Result<u64, StoreError> {
        let (_open, client) = self.writer().await?;
        request_logs::purge(&*client, tenant.key(), before, max).await
    }

    async fn count_request_logs(&self, tenant: &Tenant) -> Result<u64, StoreError> {
        request_logs::count(self.reader(), tenant.key()).await
    }

    fn stats(&self) -> StoreStats {
        StoreStats {
            queued_records: self.queued.load(Ordering::Relaxed) as u64,
            queue_capacity: self.capacity as u64,
            commits: self.commits.load(Ordering::Relaxed),
            committed_records: self.committed_records.load(Ordering::Relaxed),
            commit_seconds: self.commit_seconds.snapshot(),
            group_records: self.group_records.snapshot(),
            // The server fsyncs its WAL inside each commit; there is no separate step to time.
            fsync_seconds: Default::default(),
        }
    }

    async fn shutdown(&self) -> Result<(), StoreError> {
        // Waits for every write in flight (each holds a read guard), then refuses new ones.
        *self.open.write().await = false;
        Ok(())
    }
}

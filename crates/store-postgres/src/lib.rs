//! The PostgreSQL backend.
//!
//! One database, shared by any number of `apitrail serve` processes. Reads are pipelined over
//! a few shared connections; writes run in transactions on a small set of writer connections.
//! Migrations run at start-up under an advisory lock, so servers starting together migrate
//! once. Each org's audit chain is serialized by a row lock on its head, which holds across
//! servers. See `ARCHITECTURE.md`.
//!
//! Request logs are partitioned by UTC day of `created_at` (`partitions.rs`): partitions
//! are made a week ahead (at start-up and hourly) and on demand before a write needs them,
//! and retention drops them whole. Ingest is group-committed (`writer.rs`): concurrent calls
//! queue, and each of a few log writers takes everything queued into one transaction (claims
//! for client ids, then one binary COPY) and answers the calls only after COMMIT returned.
//! Reads go through `reader.rs`, whose read connections keep the request-log statements
//! prepared; stored values are decoded by the rule of `apitrail_store::stored` (`rows.rs`).
//!
//! Every connection reopens itself when it is found closed (`conn.rs`), so the store
//! recovers by itself when PostgreSQL restarts, fails over or drops connections.

mod actions;
mod audit;
mod conn;
mod orgs;
mod partitions;
mod reader;
mod request_logs;
mod rollups;
mod rows;
mod schema;
mod tail;
mod timeline;
mod writer;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use apitrail_model::{
    ApiKey, AuditAfter, AuditEntry, AuditFilter, ChainHead, ChainLink, LogFilter, Org, OrgId,
    PageRequest, RequestLog, SecretHash, Sort, Tenant, Timestamp, ViewerToken, new_record_id,
};
use apitrail_store::{
    AuditBatch, CommitHook, Expired, GroupBy, InsertOutcome, LogBatch, Page, RollupRead, RollupRow,
    StatsRecord, Store, StoreError, StoreStats, TailKind, TailPosition, TailStart, ViewerCreated,
};
use async_trait::async_trait;
use tokio::sync::{Mutex, OwnedMutexGuard, OwnedRwLockReadGuard, RwLock, mpsc};
use tokio_postgres::Client;
use uuid::Uuid;

use crate::conn::Conn;
use crate::partitions::Partitions;
use crate::reader::{Reader, Sql};
use crate::writer::{CommitStats, KnownValues, LogJob, Shared};

/// Tuning of the PostgreSQL backend.
#[derive(Debug, Clone)]
pub struct PgOptions {
    /// Connections shared by reads (queries are pipelined on each).
    pub readers: usize,
    /// Connections that run write transactions, one transaction at a time each.
    pub writers: usize,
    /// Connections that group-commit request-log ingest (each runs one group at a time).
    pub log_writers: usize,
    /// Records that may be in flight (waiting for or inside a write) before ingest is refused
    /// with `Overloaded`.
    pub queue_capacity: usize,
    /// The most records a log writer takes into one transaction.
    pub max_group_records: usize,
    /// How many days back from today a request log still gets a partition of its own day;
    /// older ones go into a coarse partition spanning the gap below the window, so the number
    /// of partitions does not follow the dates clients send.
    pub partition_window_days: u32,
    /// Keep the stats rollups (the default). Off only to measure what they cost (the stats
    /// bench): stats of records written without them are wrong.
    #[doc(hidden)]
    pub rollups: bool,
}

impl Default for PgOptions {
    fn default() -> Self {
        Self {
            readers: 2,
            writers: 4,
            log_writers: 2,
            queue_capacity: 200_000,
            max_group_records: 50_000,
            partition_window_days: 31,
            rollups: true,
        }
    }
}

/// A writer connection: one transaction at a time.
pub(crate) type Writer = Conn<Mutex<Client>>;
/// A writer connection held for a transaction.
type WriterGuard = OwnedMutexGuard<Client>;

/// The PostgreSQL-backed [`Store`].
///
/// Every connection is a [`Conn`], reopened when found closed, so the store recovers by
/// itself when PostgreSQL restarts or drops connections.
#[derive(Debug)]
pub struct PgStore {
    readers: Vec<Conn<Reader>>,
    next_reader: AtomicUsize,
    writers: Vec<Writer>,
    next_writer: AtomicUsize,
    /// Writers with `synchronous_commit = off`, for the action dispatcher's own bookkeeping
    /// (leases, delivery outcomes): losing their last commits to a PostgreSQL crash only
    /// means a record is delivered again.
    volatile_writers: Vec<Writer>,
    /// `false` once shut down; writes hold a read guard until they are answered, so shutdown
    /// (which takes the write lock) waits for them, queued ingest included.
    open: Arc<RwLock<bool>>,
    queued: Arc<AtomicUsize>,
    capacity: usize,
    /// Ingest calls waiting for a log writer.
    log_queue: mpsc::UnboundedSender<LogJob>,
    shared: Arc<Shared>,
    /// Makes partitions ahead of time; stopped when the store is dropped.
    maintenance: tokio::task::JoinHandle<()>,
}

impl Drop for PgStore {
    fn drop(&mut self) {
        self.maintenance.abort();
    }
}

/// Records admitted to the write path; released when dropped.
#[derive(Debug)]
pub(crate) struct Admitted {
    queued: Arc<AtomicUsize>,
    records: usize,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.queued.fetch_sub(self.records, Ordering::AcqRel);
    }
}

/// A database error as the store's: a lost connection (closed, or ended by the server with a
/// FATAL error: a terminated backend, a shutdown) is [`StoreError::Unavailable`], which the
/// API answers with 503 and which the connection pools take as the cue to reopen.
pub(crate) fn backend(e: tokio_postgres::Error) -> StoreError {
    use tokio_postgres::error::Severity;
    let fatal = e
        .as_db_error()
        .and_then(tokio_postgres::error::DbError::parsed_severity)
        .is_some_and(|s| matches!(s, Severity::Fatal | Severity::Panic));
    if e.is_closed() || fatal {
        StoreError::unavailable(e)
    } else {
        StoreError::backend(e)
    }
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

/// Starts a write transaction at READ COMMITTED whatever the database's default: the audit
/// append relies on it (after `FOR UPDATE` on the head row it must see what the previous
/// holder committed), and no write here needs more.
pub(crate) async fn begin(
    client: &mut Client,
) -> Result<tokio_postgres::Transaction<'_>, StoreError> {
    client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::ReadCommitted)
        .start()
        .await
        .map_err(backend)
}

/// Commits `tx`.
pub(crate) async fn commit(tx: tokio_postgres::Transaction<'_>) -> Result<(), StoreError> {
    tx.commit().await.map_err(backend)
}

impl PgStore {
    /// Connects to `url` (`postgres://...`), migrating the schema. Must be called within a
    /// Tokio runtime (each connection runs as a task).
    pub async fn connect(url: &str, options: PgOptions) -> Result<Self, StoreError> {
        schema::migrate(&mut conn::connect(url, conn::PLAIN).await?).await?;
        let url: Arc<str> = url.into();
        let mut readers: Vec<Conn<Reader>> = Vec::new();
        for _ in 0..options.readers.max(1) {
            readers.push(Conn::open(&url, conn::READER).await?);
        }
        let mut writers = Vec::new();
        let mut volatile_writers = Vec::new();
        for _ in 0..options.writers.max(1) {
            writers.push(Conn::open(&url, conn::PLAIN).await?);
            volatile_writers.push(Conn::open(&url, conn::VOLATILE).await?);
        }
        let shared = Arc::new(Shared {
            partitions: Arc::new(Partitions::new(options.partition_window_days)),
            values: KnownValues::default(),
            stats: CommitStats::new(),
            rollups: options.rollups,
        });
        // The live tail's LISTEN connection opens at the first tail hook.
        let _ = shared.stats.hooks.url.set(Arc::clone(&url));
        // The coming days' partitions exist before the first write needs them.
        let reader = readers[0].current();
        shared
            .partitions
            .ensure(&reader.client, partitions::days_ahead())
            .await?;
        let (log_queue, rx) = mpsc::unbounded_channel();
        let rx = Arc::new(Mutex::new(rx));
        // Each writer adds to count rows of its own slot: 1..=64, from this process's random
        // base (slot 0 is retention's), so writers of one server never share one.
        let base = (new_record_id().as_u128() % 64) as i32;
        for i in 0..options.log_writers.max(1) {
            let conn = Conn::open(&url, conn::PLAIN).await?;
            let slot = (base + i32::try_from(i).unwrap_or(0)) % 64 + 1;
            tokio::spawn(writer::log_writer(
                conn,
                Arc::clone(&rx),
                Arc::clone(&shared),
                options.max_group_records.max(1),
                slot,
            ));
        }
        let maintenance = tokio::spawn(partitions::maintain(url, Arc::clone(&shared.partitions)));
        Ok(Self {
            readers,
            next_reader: AtomicUsize::new(0),
            writers,
            next_writer: AtomicUsize::new(0),
            volatile_writers,
            open: Arc::new(RwLock::new(true)),
            queued: Arc::new(AtomicUsize::new(0)),
            capacity: options.queue_capacity,
            log_queue,
            shared,
            maintenance,
        })
    }

    /// Admits `records` to the write path, or refuses them when that would exceed the
    /// capacity (so ingest answers 503 instead of queueing without bound).
    fn admit(&self, records: usize) -> Result<Admitted, StoreError> {
        apitrail_store::admit(&self.queued, records, self.capacity)?;
        Ok(Admitted {
            queued: Arc::clone(&self.queued),
            records,
        })
    }

    /// Counts a committed write transaction of `records` records that began at `started`.
    fn committed(&self, records: usize, started: Instant) {
        self.shared.stats.committed(records, started);
    }

    /// Appends `audit` to the transaction that made the change it records (begun at
    /// `started`), and commits.
    async fn commit_audited(
        &self,
        tx: tokio_postgres::Transaction<'_>,
        tenant: &Tenant,
        audit: &AuditEntry,
        started: Instant,
    ) -> Result<(), StoreError> {
        audit::append(
            &tx,
            tenant.key(),
            tenant.org_id(),
            std::slice::from_ref(audit),
        )
        .await?;
        commit(tx).await?;
        self.committed(0, started);
        Ok(())
    }

    /// The plan PostgreSQL chooses for the statement that serves this list page (`EXPLAIN`,
    /// without costs), so tests and benchmarks can check that it reads indexes. This is the
    /// plan for these parameter values (partitions pruned at planning); the store runs the
    /// statement prepared, with a generic plan of the same shape that prunes at execution.
    pub async fn explain_list(
        &self,
        tenant: &Tenant,
        filter: &LogFilter,
        sort: Sort,
        page: PageRequest,
    ) -> Result<String, StoreError> {
        request_logs::explain_list(&*self.reader().await?, tenant.key(), filter, sort, page).await
    }

    /// PostgreSQL's plans for the request timeline's lookups by request id (audit entries,
    /// then action records; `EXPLAIN`, without costs), so tests can check that they read the
    /// `(org, request_id, created_at, id)` indexes.
    pub async fn explain_timeline(
        &self,
        tenant: &Tenant,
        request_id: &str,
    ) -> Result<String, StoreError> {
        let reader = self.reader().await?;
        let audit = timeline::explain(
            &reader.client,
            timeline::Kind::Audit,
            tenant.key(),
            request_id,
        )
        .await?;
        let actions = timeline::explain(
            &reader.client,
            timeline::Kind::Actions,
            tenant.key(),
            request_id,
        )
        .await?;
        Ok(format!("{audit}\n{actions}"))
    }

    /// The next read connection (round robin), reopened first if it is closed.
    async fn reader(&self) -> Result<Arc<Reader>, StoreError> {
        let i = self.next_reader.fetch_add(1, Ordering::Relaxed) % self.readers.len();
        self.readers[i].reader().await
    }

    /// A permit to write (refused once shut down) and an idle writer connection.
    async fn writer(&self) -> Result<(OwnedRwLockReadGuard<bool>, WriterGuard), StoreError> {
        self.pick_writer(&self.writers).await
    }

    /// Like [`PgStore::writer`], from the writers that do not wait for the WAL flush.
    async fn volatile_writer(
        &self,
    ) -> Result<(OwnedRwLockReadGuard<bool>, WriterGuard), StoreError> {
        self.pick_writer(&self.volatile_writers).await
    }

    /// An idle connection of `pool` if there is one, else the next one once it is free;
    /// reopened first if it is closed.
    async fn pick_writer(
        &self,
        pool: &[Writer],
    ) -> Result<(OwnedRwLockReadGuard<bool>, WriterGuard), StoreError> {
        let open = Arc::clone(&self.open).read_owned().await;
        if !*open {
            return Err(StoreError::Closed);
        }
        let start = self.next_writer.fetch_add(1, Ordering::Relaxed);
        let n = pool.len();
        for i in 0..n {
            let conn = &pool[(start + i) % n];
            if let Some(client) = conn.try_lock() {
                return Ok((open, conn.live(client).await?));
            }
        }
        Ok((open, pool[start % n].lock().await?))
    }
}

#[async_trait]
impl Store for PgStore {
    #[tracing::instrument(level = "debug", skip_all)]
    async fn ping(&self) -> Result<(), StoreError> {
        self.reader()
            .await?
            .client
            .simple_query("SELECT 1")
            .await
            .map(drop)
            .map_err(backend)
    }

    #[tracing::instrument(level = "debug", skip_all, fields(org = org.id.as_str()))]
    async fn create_org(&self, org: &Org, audit: &AuditEntry) -> Result<Tenant, StoreError> {
        let started = Instant::now();
        let (_open, mut client) = self.writer().await?;
        let tx = begin(&mut client).await?;
        let tenant = orgs::insert_org(&tx, org).await?;
        self.commit_audited(tx, &tenant, audit, started).await?;
        Ok(tenant)
    }

    #[tracing::instrument(level = "debug", skip_all, fields(limit))]
    async fn list_orgs(&self, after: Option<&OrgId>, limit: u32) -> Result<Page<Org>, StoreError> {
        orgs::list_orgs(&self.reader().await?.client, after, limit).await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(org = id.as_str()))]
    async fn tenant(&self, id: &OrgId) -> Result<Option<Tenant>, StoreError> {
        orgs::find_tenant(&self.reader().await?.client, id).await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(org = tenant.org_id().as_str()))]
    async fn org(&self, tenant: &Tenant) -> Result<Org, StoreError> {
        orgs::get_org(&self.reader().await?.client, tenant.key()).await
    }

    #[tracing::instrument(
        level = "debug",
        skip_all,
        fields(org = tenant.org_id().as_str(), key = %key.id)
    )]
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
        self.commit_audited(tx, tenant, audit, started).await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(org = tenant.org_id().as_str()))]
    async fn list_api_keys(&self, tenant: &Tenant) -> Result<Vec<ApiKey>, StoreError> {
        orgs::list_keys(&self.reader().await?.client, tenant).await
    }

    #[tracing::instrument(
        level = "debug",
        skip_all,
        fields(org = tenant.org_id().as_str(), key = %id)
    )]
    async fn get_api_key(&self, tenant: &Tenant, id: Uuid) -> Result<Option<ApiKey>, StoreError> {
        orgs::get_key(&self.reader().await?.client, tenant, id).await
    }

    #[tracing::instrument(
        level = "debug",
        skip_all,
        fields(org = tenant.org_id().as_str(), key = %id)
    )]
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
        commit(tx).await?;
        self.committed(0, started);
        Ok(key)
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn authenticate(
        &self,
        hash: &SecretHash,
    ) -> Result<Option<(Tenant, ApiKey)>, StoreError> {
        orgs::authenticate(&self.reader().await?.client, hash).await
    }

    #[tracing::instrument(
        level = "debug",
        skip_all,
        fields(org = tenant.org_id().as_str(), token = %token.id)
    )]
    async fn create_viewer_token(
        &self,
        tenant: &Tenant,
        token: &ViewerToken,
        hash: &SecretHash,
        audit: &AuditEntry,
        max_live: u64,
    ) -> Result<ViewerCreated, StoreError> {
        let started = Instant::now();
        let (_open, mut client) = self.writer().await?;
        let tx = begin(&mut client).await?;
        match orgs::insert_viewer(&tx, tenant.key(), token, hash, max_live).await? {
            ViewerCreated::Created => {
                self.commit_audited(tx, tenant, audit, started).await?;
                Ok(ViewerCreated::Created)
            }
            // The pruning is kept: it is correct whatever else happens.
            ViewerCreated::TooMany => {
                commit(tx).await?;
                self.committed(0, started);
                Ok(ViewerCreated::TooMany)
            }
        }
    }

    #[tracing::instrument(
        level = "debug",
        skip_all,
        fields(org = tenant.org_id().as_str(), token = %id)
    )]
    async fn revoke_viewer_token(
        &self,
        tenant: &Tenant,
        id: Uuid,
        at: Timestamp,
        audit: &AuditEntry,
    ) -> Result<Option<ViewerToken>, StoreError> {
        let started = Instant::now();
        let (_open, mut client) = self.writer().await?;
        let tx = begin(&mut client).await?;
        if orgs::revoke_viewer(&tx, tenant.key(), id, at).await? {
            audit::append(
                &tx,
                tenant.key(),
                tenant.org_id(),
                std::slice::from_ref(audit),
            )
            .await?;
        }
        let token = orgs::get_viewer(&tx, tenant, id).await?;
        commit(tx).await?;
        self.committed(0, started);
        Ok(token)
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn authenticate_viewer(
        &self,
        hash: &SecretHash,
    ) -> Result<Option<(Tenant, ViewerToken)>, StoreError> {
        orgs::authenticate_viewer(&self.reader().await?.client, hash).await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(org = tenant.org_id().as_str()))]
    async fn count_live_viewer_tokens(
        &self,
        tenant: &Tenant,
        now: Timestamp,
    ) -> Result<u64, StoreError> {
        orgs::count_live_viewers(&self.reader().await?.client, tenant.key(), now).await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(keys = used.len()))]
    async fn touch_api_keys(&self, used: Vec<(Uuid, Timestamp)>) -> Result<(), StoreError> {
        let (_open, client) = self.writer().await?;
        orgs::touch_keys(&*client, &used).await
    }

    #[tracing::instrument(
        level = "debug",
        skip_all,
        fields(batches = batches.len(), records = tracing::field::Empty)
    )]
    async fn insert_request_logs(
        &self,
        batches: Vec<LogBatch>,
    ) -> Result<InsertOutcome, StoreError> {
        let records = batches.iter().map(|b| b.logs.len()).sum();
        tracing::Span::current().record("records", records);
        let admitted = self.admit(records)?;
        let open = Arc::clone(&self.open).read_owned().await;
        if !*open {
            return Err(StoreError::Closed);
        }
        let (job, answer) = LogJob::new(batches, records, admitted, open);
        self.log_queue.send(job).map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    #[tracing::instrument(
        level = "debug",
        skip_all,
        fields(
            org = tenant.org_id().as_str(),
            sort = ?sort.key,
            dir = ?sort.dir,
            limit = page.limit,
        )
    )]
    async fn list_request_logs(
        &self,
        tenant: &Tenant,
        filter: &LogFilter,
        sort: Sort,
        page: PageRequest,
    ) -> Result<Page<RequestLog>, StoreError> {
        request_logs::list(&*self.reader().await?, tenant.key(), filter, sort, page).await
    }

    #[tracing::instrument(
        level = "debug",
        skip_all,
        fields(org = tenant.org_id().as_str(), id = %id)
    )]
    async fn get_request_log(
        &self,
        tenant: &Tenant,
        id: Uuid,
    ) -> Result<Option<RequestLog>, StoreError> {
        request_logs::get(&*self.reader().await?, tenant.key(), id).await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(org = tenant.org_id().as_str(), limit))]
    async fn list_audit_entries(
        &self,
        tenant: &Tenant,
        filter: &AuditFilter,
        after: Option<AuditAfter>,
        limit: u32,
    ) -> Result<Page<AuditEntry>, StoreError> {
        audit::list(
            &self.reader().await?.client,
            tenant.key(),
            filter,
            after,
            limit,
        )
        .await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(org = tenant.org_id().as_str(), limit))]
    async fn audit_entries_by_request(
        &self,
        tenant: &Tenant,
        request_id: &str,
        limit: u32,
    ) -> Result<Page<AuditEntry>, StoreError> {
        timeline::by_request(
            &self.reader().await?.client,
            timeline::Kind::Audit,
            tenant.key(),
            request_id,
            limit,
            audit::entry_from_row,
        )
        .await
    }

    #[tracing::instrument(
        level = "debug",
        skip_all,
        fields(batches = batches.len(), records = tracing::field::Empty)
    )]
    async fn insert_audit_entries(
        &self,
        batches: Vec<AuditBatch>,
    ) -> Result<InsertOutcome, StoreError> {
        let records = batches.iter().map(|b| b.entries.len()).sum();
        tracing::Span::current().record("records", records);
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
        commit(tx).await?;
        self.committed(records, started);
        Ok(outcome)
    }

    #[tracing::instrument(
        level = "debug",
        skip_all,
        fields(org = tenant.org_id().as_str(), after, limit)
    )]
    async fn audit_chain(
        &self,
        tenant: &Tenant,
        after: u64,
        limit: u32,
    ) -> Result<Vec<ChainLink>, StoreError> {
        audit::chain(&self.reader().await?.client, tenant.key(), after, limit).await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(org = tenant.org_id().as_str(), limit))]
    async fn list_audit_links(
        &self,
        tenant: &Tenant,
        filter: &AuditFilter,
        after: Option<AuditAfter>,
        limit: u32,
    ) -> Result<Page<ChainLink>, StoreError> {
        audit::list_links(
            &self.reader().await?.client,
            tenant.key(),
            filter,
            after,
            limit,
        )
        .await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(org = tenant.org_id().as_str(), %id))]
    async fn get_audit_link(
        &self,
        tenant: &Tenant,
        id: Uuid,
    ) -> Result<Option<ChainLink>, StoreError> {
        audit::get_link(&self.reader().await?.client, tenant.key(), id).await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(org = tenant.org_id().as_str()))]
    async fn audit_chain_head(&self, tenant: &Tenant) -> Result<ChainHead, StoreError> {
        audit::head(&self.reader().await?.client, tenant.key()).await
    }

    #[tracing::instrument(
        level = "debug",
        skip_all,
        fields(org = tenant.org_id().as_str(), before = before.millis(), max)
    )]
    async fn purge_request_logs(
        &self,
        tenant: &Tenant,
        before: Timestamp,
        max: u32,
    ) -> Result<u64, StoreError> {
        let (_open, client) = self.writer().await?;
        let n = request_logs::purge(&*client, tenant.key(), before, max).await?;
        rollups::expire(&*client, Some(tenant.key()), before.millis()).await?;
        Ok(n)
    }

    #[tracing::instrument(level = "debug", skip_all, fields(before = before.millis(), batch))]
    async fn expire_request_logs(
        &self,
        before: Timestamp,
        batch: u32,
    ) -> Result<Expired, StoreError> {
        let batch = batch.max(1);
        let mut expired = Expired::default();
        // Whole days before the cutoff: dropped, not deleted row by row.
        let days = partitions::list(&self.reader().await?.client).await?;
        for (name, lo, hi) in days {
            if hi > before.millis() {
                continue;
            }
            let (_open, mut client) = self.writer().await?;
            if partitions::drop_partition(&mut client, &name, (lo, hi)).await? {
                self.shared.partitions.forget(lo);
                expired.partitions += 1;
            }
        }
        // The boundary day (and any partition not dropped), org by org, with the claims of
        // what is deleted; then the claims the dropped partitions' records leave behind.
        let orgs = self
            .reader()
            .await?
            .client
            .rows("SELECT seq FROM orgs ORDER BY seq", &[])
            .await?;
        for row in orgs {
            let org: i64 = row.get(0);
            loop {
                let (_open, client) = self.writer().await?;
                let n = request_logs::purge(&*client, org, before, batch).await?;
                expired.records += n;
                if n < u64::from(batch) {
                    break;
                }
            }
            loop {
                let (_open, client) = self.writer().await?;
                if request_logs::prune_claims(&*client, org, before, batch).await?
                    < u64::from(batch)
                {
                    break;
                }
            }
        }
        let (_open, client) = self.writer().await?;
        rollups::expire(&*client, None, before.millis()).await?;
        Ok(expired)
    }

    async fn tail_start(&self, tenant: &Tenant, kind: TailKind) -> Result<TailStart, StoreError> {
        tail::start(self, tenant, kind).await
    }

    async fn tail_position(
        &self,
        tenant: &Tenant,
        kind: TailKind,
        id: Uuid,
    ) -> Result<Option<TailPosition>, StoreError> {
        tail::position(self, tenant, kind, id).await
    }

    async fn tail_request_logs(
        &self,
        tenant: &Tenant,
        after: TailPosition,
        limit: u32,
    ) -> Result<Vec<(TailPosition, RequestLog)>, StoreError> {
        tail::request_logs(self, tenant, after, limit).await
    }

    async fn tail_audit_entries(
        &self,
        tenant: &Tenant,
        after: TailPosition,
        limit: u32,
    ) -> Result<Vec<(TailPosition, AuditEntry)>, StoreError> {
        tail::audit_entries(self, tenant, after, limit).await
    }

    fn on_commit(&self, hook: CommitHook) {
        tail::on_commit(self, hook);
    }

    #[tracing::instrument(level = "debug", skip_all, fields(org = tenant.org_id().as_str()))]
    async fn count_request_logs(&self, tenant: &Tenant) -> Result<u64, StoreError> {
        request_logs::count(&*self.reader().await?, tenant.key()).await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(org = tenant.org_id().as_str()))]
    async fn read_rollups(
        &self,
        tenant: &Tenant,
        read: &RollupRead,
    ) -> Result<Vec<RollupRow>, StoreError> {
        rollups::read(&*self.reader().await?, tenant.key(), read).await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(org = tenant.org_id().as_str()))]
    async fn read_stats_records(
        &self,
        tenant: &Tenant,
        filter: &LogFilter,
        group: Option<GroupBy>,
        max: u32,
    ) -> Result<Vec<StatsRecord>, StoreError> {
        rollups::records(&*self.reader().await?, tenant.key(), filter, group, max).await
    }

    fn stats(&self) -> StoreStats {
        StoreStats {
            queued_records: self.queued.load(Ordering::Relaxed) as u64,
            queue_capacity: self.capacity as u64,
            commits: self.shared.stats.commits.load(Ordering::Relaxed),
            committed_records: self.shared.stats.committed_records.load(Ordering::Relaxed),
            commit_seconds: self.shared.stats.commit_seconds.snapshot(),
            group_records: self.shared.stats.group_records.snapshot(),
            // The server fsyncs its WAL inside each commit; there is no separate step to time.
            fsync_seconds: Default::default(),
        }
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn shutdown(&self) -> Result<(), StoreError> {
        // Waits for every write in flight (each holds a read guard), then refuses new ones.
        *self.open.write().await = false;
        Ok(())
    }
}

/// Writes org `org`'s `logs` into `tx` with the binary COPY ingest uses, without claims and
/// without group commit (their partitions must exist): the raw ceiling the benchmark
/// compares ingest with. Not part of the store's interface.
#[doc(hidden)]
pub async fn copy_request_logs(
    tx: &tokio_postgres::Transaction<'_>,
    org: i64,
    logs: &[RequestLog],
) -> Result<u64, StoreError> {
    let rows: Vec<(i64, &RequestLog)> = logs.iter().map(|l| (org, l)).collect();
    let copied = request_logs::copy(tx, &rows).await?;
    request_logs::note_values(tx, &request_logs::values_of(&rows)).await?;
    Ok(copied)
}

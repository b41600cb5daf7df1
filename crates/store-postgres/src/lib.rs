//! The PostgreSQL backend.
//!
//! One database, shared by any number of `apitrail serve` processes. Reads are pipelined over
//! a few shared connections; writes run in transactions on a small set of writer connections.
//! Migrations run at start-up under an advisory lock, so servers starting together migrate
//! once. Each org's audit chain is serialized by a row lock on its head, which holds across
//! servers. See `ARCHITECTURE.md`.
//!
//! Request logs are partitioned by UTC day of `created_at` (migration 0003): partitions are
//! made a week ahead (at start-up and hourly) and on demand before a write needs them, and
//! retention drops them whole. Ingest is group-committed: concurrent calls queue, and each
//! of a few log writers takes everything queued into one transaction (claims for client ids,
//! then one binary COPY) and answers the calls only after COMMIT returned.
//!
//! Every connection reopens itself when it is found closed (`conn.rs`), so the store
//! recovers by itself when PostgreSQL restarts, fails over or drops connections.

mod actions;
mod audit;
mod conn;
mod orgs;
mod request_logs;
mod schema;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use apitrail_model::{
    ApiKey, AuditAfter, AuditEntry, AuditFilter, ChainHead, ChainLink, LogFilter, Org, OrgId,
    PageRequest, RequestLog, SecretHash, Sort, Tenant, Timestamp, is_minted_record_id,
    new_record_id,
};
use apitrail_store::{
    AuditBatch, Expired, Histogram, IdOrigin, InsertOutcome, LogBatch, Page, Store, StoreError,
    StoreStats,
};
use async_trait::async_trait;
use tokio::sync::{Mutex, OwnedMutexGuard, OwnedRwLockReadGuard, RwLock, mpsc, oneshot};
use tokio_postgres::Client;
use uuid::Uuid;

use crate::conn::{Conn, connect};

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
        }
    }
}

/// A read connection that keeps the request-log statements it has run prepared.
///
/// A statement planned anew for every call plans every day partition (~0.1 ms each; 3-4 ms
/// for a month of days), where a prepared statement's generic plan is made once and prunes
/// partitions at execution from its parameters. Readers run with `plan_cache_mode =
/// force_generic_plan`, which only prepared statements heed. A prepared statement lives in
/// its connection, so a reader made for a new connection starts with an empty cache.
#[derive(Debug)]
pub(crate) struct Reader {
    client: Client,
    /// Each statement with the time it was prepared.
    statements: std::sync::Mutex<HashMap<String, (tokio_postgres::Statement, Instant)>>,
}

impl From<Client> for Reader {
    fn from(client: Client) -> Self {
        Self {
            client,
            statements: std::sync::Mutex::new(HashMap::new()),
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
    pub(crate) async fn query(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<tokio_postgres::Row>, tokio_postgres::Error> {
        let cached = self
            .cache()
            .get(sql)
            .filter(|(_, prepared)| prepared.elapsed() < Self::PLAN_TTL)
            .map(|(st, _)| st.clone());
        let statement = match cached {
            Some(st) => st,
            None => {
                let st = self.client.prepare(sql).await?;
                let mut cache = self.cache();
                if cache.len() < Self::MAX_STATEMENTS || cache.contains_key(sql) {
                    // Replacing drops the old statement, which closes it on the server.
                    cache.insert(sql.to_owned(), (st.clone(), Instant::now()));
                }
                st
            }
        };
        self.client.query(&statement, params).await
    }

    fn cache(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<String, (tokio_postgres::Statement, Instant)>> {
        // A cache only: a panic elsewhere cannot leave it inconsistent.
        self.statements
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A writer connection: one transaction at a time.
type Writer = Conn<Mutex<Client>>;
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

/// State the log writers and the store share.
#[derive(Debug)]
struct Shared {
    /// Partitions known to exist, as `lo -> hi` in Unix ms (a cache: a partition dropped by
    /// another server is noticed when a write fails, and the cache is read again).
    partitions: std::sync::Mutex<BTreeMap<i64, i64>>,
    /// See [`PgOptions::partition_window_days`].
    window_days: i64,
    /// Rows of `request_log_values` known to exist (they are never removed), so that ingest
    /// adds only new ones.
    values: std::sync::Mutex<HashSet<request_logs::Value>>,
    commits: AtomicU64,
    committed_records: AtomicU64,
    commit_seconds: Histogram,
    group_records: Histogram,
}

impl Shared {
    /// Counts a committed write transaction of `records` records that began at `started`.
    fn committed(&self, records: usize, started: Instant) {
        self.commits.fetch_add(1, Ordering::Relaxed);
        self.committed_records
            .fetch_add(records as u64, Ordering::Relaxed);
        self.commit_seconds.observe(started.elapsed().as_secs_f64());
        self.group_records.observe(records as f64);
    }

    /// Makes sure partitions hold `days`, asking the database only about days no known
    /// partition holds. A day inside the window gets its own partition; an older one the
    /// coarse partition of its gap, which then holds the other days of that gap too.
    async fn ensure_partitions(
        &self,
        client: &Client,
        days: impl IntoIterator<Item = i64>,
    ) -> Result<(), StoreError> {
        let mut days: Vec<i64> = days.into_iter().collect();
        days.sort_unstable();
        days.dedup();
        let first_day = request_logs::day_of(Timestamp::now().millis()) - self.window_days;
        for day in days {
            if self.holds(day) {
                continue;
            }
            let (lo, hi) = request_logs::make_home(client, day, first_day).await?;
            self.known_partitions().insert(lo, hi);
        }
        Ok(())
    }

    /// Whether a known partition holds `day`.
    fn holds(&self, day: i64) -> bool {
        let at = day.saturating_mul(request_logs::DAY_MS);
        self.known_partitions()
            .range(..=at)
            .next_back()
            .is_some_and(|(_, hi)| at < *hi)
    }

    /// Those of `values` not known to be in `request_log_values` already.
    fn new_values(&self, mut values: Vec<request_logs::Value>) -> Vec<request_logs::Value> {
        let known = self.known_values();
        values.retain(|v| !known.contains(v));
        values
    }

    /// Remembers `values` as stored: called only once their transaction committed, since a
    /// value wrongly thought stored would hide records from the filters that check it.
    fn noted_values(&self, values: Vec<request_logs::Value>) {
        let mut known = self.known_values();
        // Client-chosen strings: the cache stays bounded whatever they send (values are
        // never removed from the table, so forgetting them only costs a redundant insert).
        if known.len() + values.len() > Self::MAX_KNOWN_VALUES {
            known.clear();
        }
        known.extend(values);
    }

    /// Values remembered at most by [`Shared::noted_values`].
    const MAX_KNOWN_VALUES: usize = 100_000;

    fn known_values(&self) -> std::sync::MutexGuard<'_, HashSet<request_logs::Value>> {
        // Only a cache; a panic elsewhere cannot leave it inconsistent.
        self.values
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn known_partitions(&self) -> std::sync::MutexGuard<'_, BTreeMap<i64, i64>> {
        // The set is only a cache; a panic elsewhere cannot leave it inconsistent.
        self.partitions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Records admitted to the write path; released when dropped.
#[derive(Debug)]
struct Admitted {
    queued: Arc<AtomicUsize>,
    records: usize,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.queued.fetch_sub(self.records, Ordering::AcqRel);
    }
}

/// One `insert_request_logs` call waiting for (or inside) a group commit. It holds its
/// admission and the store's open guard until answered, also if the caller stopped waiting.
#[derive(Debug)]
struct LogJob {
    batches: Vec<LogBatch>,
    records: usize,
    done: oneshot::Sender<Result<InsertOutcome, StoreError>>,
    _admitted: Admitted,
    _open: OwnedRwLockReadGuard<bool>,
}

/// A group's failure, told to each of its calls.
#[derive(Debug, thiserror::Error)]
#[error("the group commit failed: {0}")]
struct GroupFailed(String);

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

impl PgStore {
    /// Connects to `url` (`postgres://...`), migrating the schema. Must be called within a
    /// Tokio runtime (each connection runs as a task).
    pub async fn connect(url: &str, options: PgOptions) -> Result<Self, StoreError> {
        schema::migrate(&mut connect(url, conn::PLAIN).await?).await?;
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
            partitions: std::sync::Mutex::new(BTreeMap::new()),
            window_days: i64::from(options.partition_window_days),
            values: std::sync::Mutex::new(HashSet::new()),
            commits: AtomicU64::new(0),
            committed_records: AtomicU64::new(0),
            commit_seconds: Histogram::new(Histogram::SECONDS),
            group_records: Histogram::new(Histogram::RECORDS),
        });
        // The coming days' partitions exist before the first write needs them.
        let reader = readers[0].current();
        shared
            .ensure_partitions(&reader.client, days_ahead())
            .await?;
        let (log_queue, rx) = mpsc::unbounded_channel();
        let rx = Arc::new(Mutex::new(rx));
        // Each writer adds to count rows of its own slot: 1..=64, from this process's random
        // base (slot 0 is retention's), so writers of one server never share one.
        let base = (new_record_id().as_u128() % 64) as i32;
        for i in 0..options.log_writers.max(1) {
            let conn = Conn::open(&url, conn::PLAIN).await?;
            let slot = (base + i32::try_from(i).unwrap_or(0)) % 64 + 1;
            tokio::spawn(log_writer(
                conn,
                Arc::clone(&rx),
                Arc::clone(&shared),
                options.max_group_records.max(1),
                slot,
            ));
        }
        let maintenance = tokio::spawn(maintain(url, Arc::clone(&shared)));
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
        self.shared.committed(records, started);
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
    async fn ping(&self) -> Result<(), StoreError> {
        self.reader()
            .await?
            .client
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
        orgs::list_orgs(&self.reader().await?.client, after, limit).await
    }

    async fn tenant(&self, id: &OrgId) -> Result<Option<Tenant>, StoreError> {
        orgs::find_tenant(&self.reader().await?.client, id).await
    }

    async fn org(&self, tenant: &Tenant) -> Result<Org, StoreError> {
        orgs::get_org(&self.reader().await?.client, tenant.key()).await
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
        orgs::list_keys(&self.reader().await?.client, tenant).await
    }

    async fn get_api_key(&self, tenant: &Tenant, id: Uuid) -> Result<Option<ApiKey>, StoreError> {
        orgs::get_key(&self.reader().await?.client, tenant, id).await
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
        orgs::authenticate(&self.reader().await?.client, hash).await
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
        let admitted = self.admit(records)?;
        let open = Arc::clone(&self.open).read_owned().await;
        if !*open {
            return Err(StoreError::Closed);
        }
        let (done, answer) = oneshot::channel();
        let job = LogJob {
            batches,
            records,
            done,
            _admitted: admitted,
            _open: open,
        };
        self.log_queue.send(job).map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    async fn list_request_logs(
        &self,
        tenant: &Tenant,
        filter: &LogFilter,
        sort: Sort,
        page: PageRequest,
    ) -> Result<Page<RequestLog>, StoreError> {
        request_logs::list(&*self.reader().await?, tenant.key(), filter, sort, page).await
    }

    async fn get_request_log(
        &self,
        tenant: &Tenant,
        id: Uuid,
    ) -> Result<Option<RequestLog>, StoreError> {
        request_logs::get(&*self.reader().await?, tenant.key(), id).await
    }

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
        audit::chain(&self.reader().await?.client, tenant.key(), after, limit).await
    }

    async fn audit_chain_head(&self, tenant: &Tenant) -> Result<ChainHead, StoreError> {
        audit::head(&self.reader().await?.client, tenant.key()).await
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

    async fn expire_request_logs(
        &self,
        before: Timestamp,
        batch: u32,
    ) -> Result<Expired, StoreError> {
        let batch = batch.max(1);
        let mut expired = Expired::default();
        // Whole days before the cutoff: dropped, not deleted row by row.
        let partitions = request_logs::partitions(&self.reader().await?.client).await?;
        for (name, lo, hi) in partitions {
            if hi > before.millis() {
                continue;
            }
            let (_open, mut client) = self.writer().await?;
            if request_logs::drop_partition(&mut client, &name, (lo, hi)).await? {
                self.shared.known_partitions().remove(&lo);
                expired.partitions += 1;
            }
        }
        // The boundary day (and any partition not dropped), org by org, with the claims of
        // what is deleted; then the claims the dropped partitions' records leave behind.
        let orgs = self
            .reader()
            .await?
            .client
            .query("SELECT seq FROM orgs ORDER BY seq", &[])
            .await
            .map_err(backend)?;
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
        Ok(expired)
    }

    async fn count_request_logs(&self, tenant: &Tenant) -> Result<u64, StoreError> {
        request_logs::count(&*self.reader().await?, tenant.key()).await
    }

    fn stats(&self) -> StoreStats {
        StoreStats {
            queued_records: self.queued.load(Ordering::Relaxed) as u64,
            queue_capacity: self.capacity as u64,
            commits: self.shared.commits.load(Ordering::Relaxed),
            committed_records: self.shared.committed_records.load(Ordering::Relaxed),
            commit_seconds: self.shared.commit_seconds.snapshot(),
            group_records: self.shared.group_records.snapshot(),
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

/// The days whose partitions are kept ready: yesterday (clocks differ) to a week ahead.
fn days_ahead() -> std::ops::RangeInclusive<i64> {
    let today = request_logs::day_of(Timestamp::now().millis());
    today - 1..=today + 7
}

/// Makes the coming days' partitions every hour, so that the write path rarely has to.
async fn maintain(url: Arc<str>, shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_secs(3600));
    tick.tick().await;
    loop {
        tick.tick().await;
        let made = async {
            let client = connect(&url, conn::PLAIN).await?;
            shared.ensure_partitions(&client, days_ahead()).await
        };
        if let Err(e) = made.await {
            tracing::warn!(error = %e, "could not make the coming days' partitions");
        }
    }
}

/// A log writer: takes every queued ingest call (up to `max_records` records) into one
/// transaction, commits, and only then answers them. Ends when the store is dropped.
async fn log_writer(
    conn: Writer,
    queue: Arc<Mutex<mpsc::UnboundedReceiver<LogJob>>>,
    shared: Arc<Shared>,
    max_records: usize,
    slot: i32,
) {
    loop {
        let mut jobs = Vec::new();
        {
            let mut rx = queue.lock().await;
            let Some(first) = rx.recv().await else {
                return;
            };
            let mut records = first.records;
            jobs.push(first);
            while records < max_records {
                match rx.try_recv() {
                    Ok(job) => {
                        records += job.records;
                        jobs.push(job);
                    }
                    Err(_) => break,
                }
            }
        }
        write_jobs(&conn, jobs, &shared, slot).await;
    }
}

/// Writes a group and answers its calls. If the group fails before its commit was sent
/// (nothing was stored), each call is tried again alone, on a reopened connection if the
/// group's was closed, so that one bad batch cannot fail the others and a dropped
/// connection fails none; if the commit itself failed, its outcome is unknown and every call
/// gets the error (a COMMIT is never retried).
async fn write_jobs(conn: &Writer, jobs: Vec<LogJob>, shared: &Shared, slot: i32) {
    let started = Instant::now();
    let records = jobs.iter().map(|j| j.records).sum();
    let mut client = match conn.lock().await {
        Ok(client) => client,
        Err(e) => return fail_all(jobs, &e),
    };
    match write_group(&mut client, &jobs, shared, slot).await {
        Ok(outcomes) => {
            shared.committed(records, started);
            for (job, outcome) in jobs.into_iter().zip(outcomes) {
                let _ = job.done.send(Ok(outcome));
            }
        }
        Err(GroupError::Commit(e)) => {
            tracing::warn!(error = %e, calls = jobs.len(), "ingest commit failed");
            fail_all(jobs, &e);
        }
        Err(GroupError::Before(e)) => {
            let lost = client.is_closed() || conn::ended_session(&e);
            if jobs.len() == 1 && !lost {
                if let Some(job) = jobs.into_iter().next() {
                    let _ = job.done.send(Err(e));
                }
                return;
            }
            tracing::debug!(error = %e, calls = jobs.len(), "group failed; writing its calls one by one");
            if lost {
                // If no new connection opens, the calls below are told why.
                let _ = conn.replace(client).await;
            } else {
                drop(client);
            }
            for job in jobs {
                let started = Instant::now();
                let written = match conn.lock().await {
                    Ok(mut client) => {
                        write_group(&mut client, std::slice::from_ref(&job), shared, slot).await
                    }
                    Err(e) => Err(GroupError::Before(e)),
                };
                let answer = match written {
                    Ok(mut outcomes) => {
                        shared.committed(job.records, started);
                        Ok(outcomes.pop().unwrap_or_default())
                    }
                    Err(GroupError::Before(e) | GroupError::Commit(e)) => Err(e),
                };
                let _ = job.done.send(answer);
            }
        }
    }
}

/// Answers every call of a group that failed with `e`.
fn fail_all(jobs: Vec<LogJob>, e: &StoreError) {
    let message = e.to_string();
    let unavailable = matches!(e, StoreError::Unavailable(_));
    for job in jobs {
        let failed = GroupFailed(message.clone());
        let _ = job.done.send(Err(if unavailable {
            StoreError::unavailable(failed)
        } else {
            StoreError::backend(failed)
        }));
    }
}

/// Where a group failed.
enum GroupError {
    /// Before COMMIT was sent: nothing was stored.
    Before(StoreError),
    /// At COMMIT: the outcome is unknown.
    Commit(StoreError),
}

/// One transaction for `jobs`, retried when a partition it needed was dropped meanwhile (by
/// retention on this or another server); returns each job's outcome.
async fn write_group(
    client: &mut Client,
    jobs: &[LogJob],
    shared: &Shared,
    slot: i32,
) -> Result<Vec<InsertOutcome>, GroupError> {
    let days: HashSet<i64> = jobs
        .iter()
        .flat_map(|j| &j.batches)
        .flat_map(|b| &b.logs)
        .map(|l| request_logs::day_of(l.created_at.millis()))
        .collect();
    let mut attempt = 0;
    loop {
        shared
            .ensure_partitions(client, days.iter().copied())
            .await
            .map_err(GroupError::Before)?;
        match try_write_group(client, jobs, shared, slot).await {
            Err(GroupError::Before(StoreError::Backend(e)))
                if attempt < 3 && is_missing_partition(e.as_ref()) =>
            {
                attempt += 1;
                shared.known_partitions().clear();
            }
            other => return other,
        }
    }
}

/// "No partition of relation found for row": a partition this process knew was dropped.
fn is_missing_partition(e: &(dyn std::error::Error + 'static)) -> bool {
    e.downcast_ref::<tokio_postgres::Error>()
        .and_then(tokio_postgres::Error::code)
        == Some(&tokio_postgres::error::SqlState::CHECK_VIOLATION)
}

async fn try_write_group(
    client: &mut Client,
    jobs: &[LogJob],
    shared: &Shared,
    slot: i32,
) -> Result<Vec<InsertOutcome>, GroupError> {
    let before = GroupError::Before;
    // Client-supplied ids are claimed first; the first record (in call order) to carry an
    // id is the one stored, later ones are duplicates.
    let mut first: HashMap<(i64, Uuid), i64> = HashMap::new();
    for batch in jobs.iter().flat_map(|j| &j.batches) {
        if batch.ids == IdOrigin::Client {
            for log in &batch.logs {
                first
                    .entry((batch.tenant.key(), log.id))
                    .or_insert(log.created_at.millis());
            }
        }
    }
    let tx = begin(client).await.map_err(before)?;
    // Minted ids are stored without a claim, so a client sending one back (a record it read,
    // re-sent) is looked up among the records: such a record is a duplicate, and gets the
    // claim it lacked, with its own created_at so that retention removes both together.
    let sent_back: Vec<(i64, Uuid)> = first
        .keys()
        .filter(|(_, id)| is_minted_record_id(id))
        .copied()
        .collect();
    let mut stored = HashSet::new();
    for (org, id, created) in request_logs::stored_among(&tx, &sent_back)
        .await
        .map_err(before)?
    {
        first.insert((org, id), created);
        stored.insert((org, id));
    }
    let mut claims: Vec<(i64, Uuid, i64)> = first
        .into_iter()
        .map(|((org, id), created)| (org, id, created))
        .collect();
    claims.sort_unstable();
    let mut claimed: HashSet<(i64, Uuid)> = request_logs::claim(&tx, &claims)
        .await
        .map_err(before)?
        .into_iter()
        .filter(|key| !stored.contains(key))
        .collect();
    let mut outcomes = Vec::with_capacity(jobs.len());
    let mut rows = Vec::new();
    for job in jobs {
        let mut outcome = InsertOutcome::default();
        for batch in &job.batches {
            let org = batch.tenant.key();
            for log in &batch.logs {
                if batch.ids == IdOrigin::Minted || claimed.remove(&(org, log.id)) {
                    rows.push((org, log));
                    outcome.accepted += 1;
                } else {
                    outcome.duplicates += 1;
                }
            }
        }
        outcomes.push(outcome);
    }
    request_logs::copy(&tx, &rows).await.map_err(before)?;
    request_logs::count_stored(&tx, slot, &rows)
        .await
        .map_err(before)?;
    let values = shared.new_values(request_logs::values_of(&rows));
    request_logs::note_values(&tx, &values)
        .await
        .map_err(before)?;
    tx.commit()
        .await
        .map_err(|e| GroupError::Commit(backend(e)))?;
    shared.noted_values(values);
    Ok(outcomes)
}

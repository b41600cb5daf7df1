//! The embedded SQLite backend.
//!
//! One database file in WAL mode. A single writer thread ([`writer`]) owns the only writing
//! connection and group-commits everything queued; a pool of read connections ([`reader`])
//! serves queries concurrently; a checkpointer thread copies the WAL back into the database so
//! the writer never stalls on it. See `ARCHITECTURE.md` for why.

mod actions;
mod audit;
mod levels;
mod orgs;
mod reader;
mod request_logs;
mod rollups;
mod rows;
mod schema;
mod tail;
mod timeline;
mod writer;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::Duration;

use apitrail_model::{
    ApiKey, AuditAfter, AuditEntry, AuditFilter, ChainHead, ChainLink, LogFilter, Org, OrgId,
    PageRequest, RequestLog, SecretHash, Sort, Tenant, Timestamp, ViewerToken,
};
use apitrail_store::{
    AuditBatch, CommitHook, GroupBy, InsertOutcome, LogBatch, Page, RollupRead, RollupRow,
    StatsRecord, Store, StoreError, StoreStats, TailKind, TailPosition, TailStart, ViewerCreated,
};
use async_trait::async_trait;
use rusqlite::{Connection, OpenFlags};
use uuid::Uuid;

pub use crate::levels::Caps as LevelCaps;
use crate::levels::Levels;
use crate::reader::Readers;
pub use crate::request_logs::SMALL_WINDOW_ROWS;
use crate::writer::{Writer, WriterConfig};

/// Tuning of the SQLite backend.
#[derive(Debug, Clone)]
pub struct SqliteOptions {
    /// Records that may wait in the write queue before ingest is refused with `Overloaded`.
    pub queue_capacity: usize,
    /// Records after which a commit group stops growing.
    pub max_group_records: usize,
    /// Read connections.
    pub readers: usize,
    /// Page cache of the writing connection, in MiB (it holds the hot index pages).
    pub writer_cache_mib: u32,
    /// Page cache of each reading connection, in MiB.
    pub reader_cache_mib: u32,
    /// When the leveled side keys (duration, request id) move between levels.
    pub level_caps: LevelCaps,
    /// Keep the stats rollups (the default). Off only to measure what they cost (the stats
    /// bench): stats of records written without them are wrong.
    #[doc(hidden)]
    pub rollups: bool,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        Self {
            queue_capacity: 200_000,
            max_group_records: 50_000,
            readers: 4,
            writer_cache_mib: 512,
            reader_cache_mib: 64,
            level_caps: LevelCaps::default(),
            rollups: true,
        }
    }
}

/// The SQLite-backed [`Store`].
#[derive(Debug)]
pub struct SqliteStore {
    path: PathBuf,
    levels: Arc<Levels>,
    rollups: bool,
    writer: Arc<Writer>,
    readers: Arc<Readers>,
    checkpointer: Arc<Checkpointer>,
    tenants: RwLock<HashMap<OrgId, Tenant>>,
    commit_hooks: Arc<CommitHooks>,
}

/// What runs after each of the writer's commits (the live tail's wake-ups).
#[derive(Default)]
struct CommitHooks(RwLock<Vec<CommitHook>>);

impl std::fmt::Debug for CommitHooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.0.read().map(|h| h.len()).unwrap_or(0);
        f.debug_tuple("CommitHooks").field(&n).finish()
    }
}

impl CommitHooks {
    fn run(&self) {
        for hook in self.0.read().unwrap_or_else(|e| e.into_inner()).iter() {
            hook();
        }
    }
}

/// The database file inside a data directory.
pub const DB_FILE: &str = "apitrail.db";

impl SqliteStore {
    /// Opens (creating if needed) the store in `data_dir` (file [`DB_FILE`]), migrating its
    /// schema.
    pub fn open(data_dir: &Path, options: SqliteOptions) -> Result<Self, StoreError> {
        Self::open_file(&data_dir.join(DB_FILE), options)
    }

    /// Opens (creating if needed) the store in the database file `path`, migrating its schema.
    pub fn open_file(path: &Path, options: SqliteOptions) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(StoreError::backend)?;
        }
        let path = path.to_path_buf();
        let mut conn = open_connection(&path, false, options.writer_cache_mib)?;
        schema::migrate(&mut conn).map_err(StoreError::backend)?;
        // The writer never checkpoints by itself; the checkpointer thread does.
        conn.pragma_update(None, "wal_autocheckpoint", 0)
            .map_err(StoreError::backend)?;
        let readers = (0..options.readers.max(1))
            .map(|_| open_connection(&path, true, options.reader_cache_mib))
            .collect::<Result<Vec<_>, _>>()?;
        let checkpointer = Checkpointer::start(open_connection(&path, false, 16)?)?;
        let wake = checkpointer.waker();
        // The writer commits without fsync; its syncer thread fsyncs the WAL before any
        // acknowledgement (see writer.rs).
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(StoreError::backend)?;
        let mut wal = path.clone().into_os_string();
        wal.push("-wal");
        let levels = Arc::new(Levels::load(&conn, options.level_caps)?);
        let maintained = Arc::clone(&levels);
        let commit_hooks = Arc::new(CommitHooks::default());
        let hooks = Arc::clone(&commit_hooks);
        // When the WAL is reset, SQLite truncates the file to this size.
        conn.pragma_update(None, "journal_size_limit", WAL_RESTART_FRAMES * 16384)
            .map_err(StoreError::backend)?;
        let writer = Writer::start(
            conn,
            PathBuf::from(wal),
            WriterConfig {
                queue_capacity: options.queue_capacity,
                max_group_records: options.max_group_records,
            },
            move |conn: &Connection| {
                hooks.run();
                wake.wake();
                if wake.take_long_wal() {
                    writer::restart_wal(conn);
                }
                maintained.maintain(conn);
            },
        )
        .map_err(StoreError::backend)?;
        Ok(Self {
            path,
            levels,
            rollups: options.rollups,
            writer: Arc::new(writer),
            readers: Readers::new(readers),
            checkpointer: Arc::new(checkpointer),
            tenants: RwLock::new(HashMap::new()),
            commit_hooks,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// SQLite's query plan for the statement a list query runs (one line per step), so that
    /// tests can check which indexes answer it. Not part of the `Store` interface.
    #[doc(hidden)]
    pub async fn explain_list(
        &self,
        tenant: &Tenant,
        filter: &LogFilter,
        sort: Sort,
        page: PageRequest,
    ) -> Result<Vec<String>, StoreError> {
        let (org, filter) = (tenant.key(), filter.clone());
        self.readers
            .run(move |conn| request_logs::explain(conn, org, &filter, sort, page))
            .await
    }

    /// SQLite's query plans for the request timeline's lookups by request id (audit entries,
    /// then action records; one line per step), so that tests can check which indexes answer
    /// them. Not part of the `Store` interface.
    #[doc(hidden)]
    pub async fn explain_timeline(
        &self,
        tenant: &Tenant,
        request_id: &str,
    ) -> Result<Vec<String>, StoreError> {
        let (org, request_id) = (tenant.key(), request_id.to_owned());
        self.readers
            .run(move |conn| {
                let mut steps = timeline::explain(conn, timeline::Kind::Audit, org, &request_id)?;
                steps.extend(timeline::explain(
                    conn,
                    timeline::Kind::Actions,
                    org,
                    &request_id,
                )?);
                Ok(steps)
            })
            .await
    }

    fn cache_tenant(&self, tenant: &Tenant) {
        self.tenants
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(tenant.org_id().clone(), tenant.clone());
    }
}

/// A SQLite error as the store's.
pub(crate) fn backend(e: rusqlite::Error) -> StoreError {
    StoreError::backend(e)
}

/// Opens a connection with the pragmas every connection needs.
fn open_connection(path: &Path, read_only: bool, cache_mib: u32) -> Result<Connection, StoreError> {
    let flags = if read_only {
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX
    } else {
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
    };
    let conn = Connection::open_with_flags(path, flags).map_err(StoreError::backend)?;
    conn.busy_timeout(Duration::from_secs(10))
        .map_err(StoreError::backend)?;
    if !read_only {
        // Only takes effect on a new, empty database: larger pages make the wide indexes
        // shallower and cost fewer page writes per record (see BENCHMARKS.md).
        conn.pragma_update(None, "page_size", 16384)
            .map_err(StoreError::backend)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(StoreError::backend)?;
    }
    // FULL: a commit returns only after the WAL is fsynced. The group-commit writer lowers
    // this to NORMAL and fsyncs on its own syncer thread instead (see writer.rs).
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(StoreError::backend)?;
    conn.pragma_update(None, "cache_size", -(i64::from(cache_mib) * 1024))
        .map_err(StoreError::backend)?;
    conn.pragma_update(None, "temp_store", "MEMORY")
        .map_err(StoreError::backend)?;
    conn.pragma_update(None, "mmap_size", 1i64 << 34)
        .map_err(StoreError::backend)?;
    conn.set_prepared_statement_cache_capacity(128);
    Ok(conn)
}

/// WAL length (in frames, 16 KiB each) beyond which the writer restarts the WAL.
const WAL_RESTART_FRAMES: i64 = 8192;

/// Copies committed WAL frames into the database file in the background (PASSIVE: never
/// blocks the writer or readers), woken after commits. It also measures the WAL, so that the
/// writer knows when to restart it (see `writer::restart_wal`).
#[derive(Debug)]
struct Checkpointer {
    signal: Arc<(Mutex<CheckpointState>, Condvar)>,
    wal_frames: Arc<AtomicI64>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

#[derive(Debug, Default)]
struct CheckpointState {
    pending: bool,
    stop: bool,
}

#[derive(Debug, Clone)]
struct CheckpointWaker {
    signal: Arc<(Mutex<CheckpointState>, Condvar)>,
    wal_frames: Arc<AtomicI64>,
}

impl CheckpointWaker {
    fn wake(&self) {
        let (lock, cvar) = &*self.signal;
        lock.lock().unwrap_or_else(|e| e.into_inner()).pending = true;
        cvar.notify_one();
    }

    /// Whether the WAL, as last measured, is long enough to restart; claims the restart so
    /// that it is not asked for again before the next measurement.
    fn take_long_wal(&self) -> bool {
        self.wal_frames
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n > WAL_RESTART_FRAMES).then_some(0)
            })
            .is_ok()
    }
}

impl Checkpointer {
    fn start(conn: Connection) -> Result<Self, StoreError> {
        let signal = Arc::new((Mutex::new(CheckpointState::default()), Condvar::new()));
        let wal_frames = Arc::new(AtomicI64::new(0));
        let thread_signal = Arc::clone(&signal);
        let thread_frames = Arc::clone(&wal_frames);
        let thread = std::thread::Builder::new()
            .name("apitrail-sqlite-checkpoint".into())
            .spawn(move || {
                let (lock, cvar) = &*thread_signal;
                loop {
                    {
                        let mut state = lock.lock().unwrap_or_else(|e| e.into_inner());
                        while !state.pending && !state.stop {
                            state = cvar.wait(state).unwrap_or_else(|e| e.into_inner());
                        }
                        if state.stop {
                            break;
                        }
                        state.pending = false;
                    }
                    match conn
                        .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get::<_, i64>(1))
                    {
                        Ok(frames) => thread_frames.store(frames, Ordering::Release),
                        Err(e) => tracing::warn!(error = %e, "WAL checkpoint failed"),
                    }
                    // At most a few checkpoints a second: each one walks the WAL index.
                    std::thread::sleep(Duration::from_millis(200));
                }
                let _ = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
            })
            .map_err(StoreError::backend)?;
        Ok(Self {
            signal,
            wal_frames,
            thread: Mutex::new(Some(thread)),
        })
    }

    fn waker(&self) -> CheckpointWaker {
        CheckpointWaker {
            signal: Arc::clone(&self.signal),
            wal_frames: Arc::clone(&self.wal_frames),
        }
    }

    fn stop(&self) {
        {
            let (lock, cvar) = &*self.signal;
            lock.lock().unwrap_or_else(|e| e.into_inner()).stop = true;
            cvar.notify_one();
        }
        if let Some(t) = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = t.join();
        }
    }
}

#[async_trait]
impl Store for SqliteStore {
    #[tracing::instrument(level = "debug", skip_all)]
    async fn ping(&self) -> Result<(), StoreError> {
        self.readers
            .run(|conn| {
                conn.query_row("SELECT 1", [], |_| Ok(()))
                    .map_err(StoreError::backend)
            })
            .await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(org = org.id.as_str()))]
    async fn create_org(&self, org: &Org, audit: &AuditEntry) -> Result<Tenant, StoreError> {
        let (org, audit) = (org.clone(), audit.clone());
        let tenant = self
            .writer
            .submit(0, move |conn| orgs::insert_org(conn, &org, &audit))
            .await?;
        self.cache_tenant(&tenant);
        Ok(tenant)
    }

    #[tracing::instrument(level = "debug", skip_all, fields(limit))]
    async fn list_orgs(&self, after: Option<&OrgId>, limit: u32) -> Result<Page<Org>, StoreError> {
        let after = after.cloned();
        self.readers
            .run(move |conn| orgs::list_orgs(conn, after.as_ref(), limit))
            .await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(org = id.as_str()))]
    async fn tenant(&self, id: &OrgId) -> Result<Option<Tenant>, StoreError> {
        if let Some(t) = self
            .tenants
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
        {
            return Ok(Some(t.clone()));
        }
        let lookup = id.clone();
        let found = self
            .readers
            .run(move |conn| orgs::find_tenant(conn, &lookup))
            .await?;
        // Orgs are never deleted, so a found tenant can be cached for good; a miss is not
        // cached because another process (the CLI) may create the org at any time.
        if let Some(t) = &found {
            self.cache_tenant(t);
        }
        Ok(found)
    }

    #[tracing::instrument(level = "debug", skip_all, fields(org = tenant.org_id().as_str()))]
    async fn org(&self, tenant: &Tenant) -> Result<Org, StoreError> {
        let key = tenant.key();
        self.readers.run(move |conn| orgs::get_org(conn, key)).await
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
        let (org, key, hash, audit) = (tenant.key(), key.clone(), *hash, audit.clone());
        self.writer
            .submit(0, move |conn| {
                orgs::insert_key(conn, org, &key, &hash, &audit)
            })
            .await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(org = tenant.org_id().as_str()))]
    async fn list_api_keys(&self, tenant: &Tenant) -> Result<Vec<ApiKey>, StoreError> {
        let tenant = tenant.clone();
        self.readers
            .run(move |conn| orgs::list_keys(conn, &tenant))
            .await
    }

    #[tracing::instrument(
        level = "debug",
        skip_all,
        fields(org = tenant.org_id().as_str(), key = %id)
    )]
    async fn get_api_key(&self, tenant: &Tenant, id: Uuid) -> Result<Option<ApiKey>, StoreError> {
        let tenant = tenant.clone();
        self.readers
            .run(move |conn| orgs::get_key(conn, &tenant, id))
            .await
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
        let (tenant, audit) = (tenant.clone(), audit.clone());
        self.writer
            .submit(0, move |conn| {
                orgs::revoke_key(conn, &tenant, id, at, &audit)
            })
            .await
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn authenticate(
        &self,
        hash: &SecretHash,
    ) -> Result<Option<(Tenant, ApiKey)>, StoreError> {
        let hash = *hash;
        self.readers
            .run(move |conn| orgs::authenticate(conn, &hash))
            .await
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
        let (org, token, hash, audit) = (tenant.key(), token.clone(), *hash, audit.clone());
        self.writer
            .submit(0, move |conn| {
                orgs::insert_viewer(conn, org, &token, &hash, &audit, max_live)
            })
            .await
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
        let (tenant, audit) = (tenant.clone(), audit.clone());
        self.writer
            .submit(0, move |conn| {
                orgs::revoke_viewer(conn, &tenant, id, at, &audit)
            })
            .await
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn authenticate_viewer(
        &self,
        hash: &SecretHash,
    ) -> Result<Option<(Tenant, ViewerToken)>, StoreError> {
        let hash = *hash;
        self.readers
            .run(move |conn| orgs::authenticate_viewer(conn, &hash))
            .await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(org = tenant.org_id().as_str()))]
    async fn count_live_viewer_tokens(
        &self,
        tenant: &Tenant,
        now: Timestamp,
    ) -> Result<u64, StoreError> {
        let org = tenant.key();
        self.readers
            .run(move |conn| orgs::count_live_viewers(conn, org, now))
            .await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(keys = used.len()))]
    async fn touch_api_keys(&self, used: Vec<(Uuid, Timestamp)>) -> Result<(), StoreError> {
        self.writer
            .submit(0, move |conn| orgs::touch_keys(conn, &used))
            .await
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
        let levels = Arc::clone(&self.levels);
        // The batch's rollups are summed here, on the caller's thread, so the single writer
        // thread only merges them into the stored buckets.
        let rollups = self.rollups.then(|| {
            let mut r = apitrail_store::logstats::Rollups::new();
            for b in &batches {
                for log in &b.logs {
                    r.add(b.tenant.key(), log);
                }
            }
            r
        });
        self.writer
            .submit(records, move |conn| {
                request_logs::insert(conn, &batches, &levels, rollups)
            })
            .await
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
        let (org, filter) = (tenant.key(), filter.clone());
        self.readers
            .run(move |conn| request_logs::list(conn, org, &filter, sort, page))
            .await
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
        let org = tenant.key();
        self.readers
            .run(move |conn| request_logs::get(conn, org, id))
            .await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(org = tenant.org_id().as_str(), limit))]
    async fn list_audit_entries(
        &self,
        tenant: &Tenant,
        filter: &AuditFilter,
        after: Option<AuditAfter>,
        limit: u32,
    ) -> Result<Page<AuditEntry>, StoreError> {
        let (org, filter) = (tenant.key(), filter.clone());
        self.readers
            .run(move |conn| audit::list(conn, org, &filter, after, limit))
            .await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(org = tenant.org_id().as_str(), limit))]
    async fn audit_entries_by_request(
        &self,
        tenant: &Tenant,
        request_id: &str,
        limit: u32,
    ) -> Result<Page<AuditEntry>, StoreError> {
        let (org, request_id) = (tenant.key(), request_id.to_owned());
        self.readers
            .run(move |conn| {
                timeline::by_request(
                    conn,
                    timeline::Kind::Audit,
                    org,
                    &request_id,
                    limit,
                    audit::entry_from_row,
                )
            })
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
        self.writer
            .submit(records, move |conn| audit::insert(conn, &batches))
            .await
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
        let org = tenant.key();
        self.readers
            .run(move |conn| audit::chain(conn, org, after, limit))
            .await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(org = tenant.org_id().as_str(), limit))]
    async fn list_audit_links(
        &self,
        tenant: &Tenant,
        filter: &AuditFilter,
        after: Option<AuditAfter>,
        limit: u32,
    ) -> Result<Page<ChainLink>, StoreError> {
        let (org, filter) = (tenant.key(), filter.clone());
        self.readers
            .run(move |conn| audit::list_links(conn, org, &filter, after, limit))
            .await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(org = tenant.org_id().as_str(), %id))]
    async fn get_audit_link(
        &self,
        tenant: &Tenant,
        id: Uuid,
    ) -> Result<Option<ChainLink>, StoreError> {
        let org = tenant.key();
        self.readers
            .run(move |conn| audit::get_link(conn, org, id))
            .await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(org = tenant.org_id().as_str()))]
    async fn audit_chain_head(&self, tenant: &Tenant) -> Result<ChainHead, StoreError> {
        let org = tenant.key();
        self.readers
            .run(move |conn| audit::chain_head(conn, org))
            .await
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
        let org = tenant.key();
        self.writer
            .submit(0, move |conn| request_logs::purge(conn, org, before, max))
            .await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(org = tenant.org_id().as_str()))]
    async fn tail_start(&self, tenant: &Tenant, kind: TailKind) -> Result<TailStart, StoreError> {
        let org = tenant.key();
        self.readers
            .run(move |conn| tail::start(conn, org, kind))
            .await
    }

    async fn tail_position(
        &self,
        tenant: &Tenant,
        kind: TailKind,
        id: Uuid,
    ) -> Result<Option<TailPosition>, StoreError> {
        let org = tenant.key();
        self.readers
            .run(move |conn| tail::position(conn, org, kind, id))
            .await
    }

    async fn tail_request_logs(
        &self,
        tenant: &Tenant,
        after: TailPosition,
        limit: u32,
    ) -> Result<Vec<(TailPosition, RequestLog)>, StoreError> {
        let org = tenant.key();
        self.readers
            .run(move |conn| tail::request_logs(conn, org, after, limit))
            .await
    }

    async fn tail_audit_entries(
        &self,
        tenant: &Tenant,
        after: TailPosition,
        limit: u32,
    ) -> Result<Vec<(TailPosition, AuditEntry)>, StoreError> {
        let org = tenant.key();
        self.readers
            .run(move |conn| tail::audit_entries(conn, org, after, limit))
            .await
    }

    fn on_commit(&self, hook: CommitHook) {
        self.commit_hooks
            .0
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push(hook);
    }

    async fn count_request_logs(&self, tenant: &Tenant) -> Result<u64, StoreError> {
        let org = tenant.key();
        self.readers
            .run(move |conn| request_logs::count(conn, org))
            .await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(org = tenant.org_id().as_str()))]
    async fn read_rollups(
        &self,
        tenant: &Tenant,
        read: &RollupRead,
    ) -> Result<Vec<RollupRow>, StoreError> {
        let (org, read) = (tenant.key(), read.clone());
        self.readers
            .run(move |conn| rollups::read(conn, org, &read))
            .await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(org = tenant.org_id().as_str()))]
    async fn read_stats_records(
        &self,
        tenant: &Tenant,
        filter: &LogFilter,
        group: Option<GroupBy>,
        max: u32,
    ) -> Result<Vec<StatsRecord>, StoreError> {
        let (org, filter) = (tenant.key(), filter.clone());
        self.readers
            .run(move |conn| rollups::records(conn, org, &filter, group, max))
            .await
    }

    fn stats(&self) -> StoreStats {
        let s = &self.writer.stats;
        StoreStats {
            queued_records: s.queued_records.load(Ordering::Relaxed) as u64,
            queue_capacity: self.writer.capacity() as u64,
            commits: s.commits.load(Ordering::Relaxed),
            committed_records: s.committed_records.load(Ordering::Relaxed),
            commit_seconds: s.commit_seconds.snapshot(),
            fsync_seconds: s.fsync_seconds.snapshot(),
            group_records: s.group_records.snapshot(),
        }
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn shutdown(&self) -> Result<(), StoreError> {
        // Joining threads blocks, so it happens off the async runtime's workers.
        let (writer, checkpointer) = (Arc::clone(&self.writer), Arc::clone(&self.checkpointer));
        tokio::task::spawn_blocking(move || {
            writer.shutdown();
            checkpointer.stop();
        })
        .await
        .map_err(StoreError::backend)
    }
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        self.writer.shutdown();
        self.checkpointer.stop();
    }
}

//! The storage interface of apitrail.
//!
//! [`Store`] speaks the domain's language (orgs, keys, request logs), never SQL: each backend
//! (`apitrail-store-sqlite`, later PostgreSQL) implements it with its own schema and
//! migrations, and `apitrail-store-tests` holds the conformance suite every backend passes.
//!
//! Tenant scoping lives in the signatures: every method that touches org data takes a
//! [`Tenant`], which only a store can mint, so no caller can forget the org.

pub mod actions;
pub mod logstats;
pub mod stats;
pub mod stored;
pub mod tail;

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};

use apitrail_model::{
    ApiKey, AuditAfter, AuditEntry, AuditFilter, ChainHead, ChainLink, ChainReport, ChainVerifier,
    LogFilter, Org, OrgId, PageRequest, RequestLog, SecretHash, Sort, Tenant, Timestamp,
    ViewerToken,
};
use async_trait::async_trait;
use uuid::Uuid;

pub use actions::{ActionStore, Expected, Leased, Transition};
pub use logstats::{
    Assembler, GroupBy, RollupRead, RollupRow, StatsAnswer, StatsError, StatsQuery, StatsRecord,
};
pub use stats::{Histogram, HistogramSnapshot, StoreStats};
pub use stored::ValueField;
pub use tail::{CommitHook, TailKind, TailPosition, TailSnapshot, TailStart};

/// Errors every backend maps its failures into.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A unique thing (org id, key id) already exists.
    #[error("{0} already exists")]
    Conflict(&'static str),
    /// The write queue is full; the caller should retry later.
    #[error("the write queue is full")]
    Overloaded {
        /// A suggested delay before retrying.
        retry_after_secs: u32,
    },
    /// The store is shutting down and accepts no more writes.
    #[error("the store is shutting down")]
    Closed,
    /// The database cannot be reached right now (a server store whose connection was lost
    /// or cannot be opened); nothing of the call was stored, and a retry may succeed.
    #[error("the database is unreachable: {0}")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The backend failed; details are for the logs, never for clients.
    #[error("storage backend failure: {0}")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl StoreError {
    /// Wraps a backend error.
    pub fn backend(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self::Backend(Box::new(e))
    }

    /// Wraps the error of a database that cannot be reached.
    pub fn unavailable(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self::Unavailable(Box::new(e))
    }
}

/// Reserves room for `records` in a write queue holding `queued` of `capacity` records, or
/// refuses with [`StoreError::Overloaded`] (ingest then answers 503 instead of queueing without
/// bound). The caller gives the room back (`fetch_sub`) once the write is done.
pub fn admit(queued: &AtomicUsize, records: usize, capacity: usize) -> Result<(), StoreError> {
    let mut current = queued.load(Ordering::Relaxed);
    loop {
        if current + records > capacity {
            return Err(StoreError::Overloaded {
                retry_after_secs: 1,
            });
        }
        match queued.compare_exchange_weak(
            current,
            current + records,
            Ordering::AcqRel,
            Ordering::Relaxed,
        ) {
            Ok(_) => return Ok(()),
            Err(now) => current = now,
        }
    }
}

/// A page of results.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T> {
    /// The items, in the requested order.
    pub items: Vec<T>,
    /// Whether more items follow the last one.
    pub has_more: bool,
}

impl<T> Page<T> {
    /// The page of at most `limit` items from `items`, read as up to `limit + 1`: the one
    /// beyond the limit only says that more follow.
    pub fn from_lookahead(mut items: Vec<T>, limit: u32) -> Self {
        let has_more = items.len() > limit as usize;
        items.truncate(limit as usize);
        Self { items, has_more }
    }

    /// No items, and none after them.
    pub fn empty() -> Self {
        Self {
            items: Vec::new(),
            has_more: false,
        }
    }
}

/// Request logs of one org, written as part of one atomic batch.
#[derive(Debug, Clone)]
pub struct LogBatch {
    /// The org the logs belong to.
    pub tenant: Tenant,
    /// The logs, already validated and with ids assigned.
    pub logs: Vec<RequestLog>,
    /// Where the logs' ids come from.
    pub ids: IdOrigin,
}

impl LogBatch {
    /// A batch whose ids came from the client, so any of them may repeat a stored one.
    pub fn new(tenant: Tenant, logs: Vec<RequestLog>) -> Self {
        Self {
            tenant,
            logs,
            ids: IdOrigin::Client,
        }
    }

    /// A batch whose ids were all just minted by this process (`new_record_id`).
    pub fn minted(tenant: Tenant, logs: Vec<RequestLog>) -> Self {
        Self {
            tenant,
            logs,
            ids: IdOrigin::Minted,
        }
    }
}

/// Where a batch's record ids come from. A backend that cannot check every id for a
/// duplicate cheaply (PostgreSQL's partitioned table) checks only [`IdOrigin::Client`] ids;
/// a backend with one unique index checks all alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdOrigin {
    /// Sent by the client: a retry may repeat an id already stored, which must be counted as
    /// a duplicate.
    Client,
    /// Minted by the server for records that came without one (time-ordered UUIDv7s): they
    /// cannot repeat a stored id, so no duplicate check is needed.
    Minted,
}

/// What a retention pass removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Expired {
    /// Records deleted one by one (by [`Store::purge_request_logs`] or its equivalent).
    pub records: u64,
    /// Whole time partitions dropped (backends that partition by time; their records are not
    /// counted in `records`).
    pub partitions: u64,
}

/// Audit entries of one org, written as part of one atomic batch.
#[derive(Debug, Clone)]
pub struct AuditBatch {
    /// The org the entries belong to.
    pub tenant: Tenant,
    /// The entries, already validated and with ids assigned, in the order to chain them.
    pub entries: Vec<AuditEntry>,
}

/// What [`Store::create_viewer_token`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ViewerCreated {
    /// The token was stored, with its audit entry.
    Created,
    /// The org already has the most live tokens it may have; nothing was stored.
    TooMany,
}

/// Links read per store call while a chain is verified.
const VERIFY_PAGE: u32 = 2_000;

/// What an ingest call stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct InsertOutcome {
    /// Records newly stored.
    pub accepted: u64,
    /// Records skipped because their id was already stored for their org.
    pub duplicates: u64,
}

/// The storage interface. All methods are cancel-safe in the sense that a write, once
/// submitted, completes (or fails) as a whole whether or not the caller still waits.
///
/// Backends trace each call as a `debug` span named after the method, with only cheap,
/// safe fields (the org id, ids, counts, sort and limit; never records, bodies, secrets or
/// secret hashes).
#[async_trait]
pub trait Store: ActionStore + Send + Sync + fmt::Debug + 'static {
    /// Checks that the store answers.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Creates an org and records `audit` for it in the same transaction.
    async fn create_org(&self, org: &Org, audit: &AuditEntry) -> Result<Tenant, StoreError>;

    /// Lists orgs by id, after `after`, at most `limit` (plus whether more follow).
    async fn list_orgs(&self, after: Option<&OrgId>, limit: u32) -> Result<Page<Org>, StoreError>;

    /// Resolves an org id to a tenant handle, if the org exists.
    async fn tenant(&self, id: &OrgId) -> Result<Option<Tenant>, StoreError>;

    /// The org behind a tenant.
    async fn org(&self, tenant: &Tenant) -> Result<Org, StoreError>;

    /// Stores a new key (by its hash only) and records `audit`, atomically.
    async fn create_api_key(
        &self,
        tenant: &Tenant,
        key: &ApiKey,
        hash: &SecretHash,
        audit: &AuditEntry,
    ) -> Result<(), StoreError>;

    /// The org's keys, oldest first.
    async fn list_api_keys(&self, tenant: &Tenant) -> Result<Vec<ApiKey>, StoreError>;

    /// One of the org's keys.
    async fn get_api_key(&self, tenant: &Tenant, id: Uuid) -> Result<Option<ApiKey>, StoreError>;

    /// Revokes one of the org's keys at `at` and records `audit`, atomically. Revoking a
    /// revoked key changes nothing and records nothing. `None` when the org has no such key.
    async fn revoke_api_key(
        &self,
        tenant: &Tenant,
        id: Uuid,
        at: Timestamp,
        audit: &AuditEntry,
    ) -> Result<Option<ApiKey>, StoreError>;

    /// Finds the live (unrevoked) key with this secret hash, and its org.
    async fn authenticate(&self, hash: &SecretHash)
    -> Result<Option<(Tenant, ApiKey)>, StoreError>;

    /// Stores a new viewer token (by its hash only) and records `audit`, atomically, unless
    /// the org already has `max_live` live tokens (unrevoked, expiring after the token's
    /// `created_at`): then nothing is stored ([`ViewerCreated::TooMany`]). The org's expired
    /// and revoked tokens are deleted in the same transaction, so an org never keeps more
    /// rows than its live tokens plus those that died since its last creation.
    async fn create_viewer_token(
        &self,
        tenant: &Tenant,
        token: &ViewerToken,
        hash: &SecretHash,
        audit: &AuditEntry,
        max_live: u64,
    ) -> Result<ViewerCreated, StoreError>;

    /// Revokes one of the org's viewer tokens at `at` and records `audit`, atomically.
    /// Revoking a revoked token changes nothing and records nothing. `None` when the org has
    /// no such token (or no longer keeps it).
    async fn revoke_viewer_token(
        &self,
        tenant: &Tenant,
        id: Uuid,
        at: Timestamp,
        audit: &AuditEntry,
    ) -> Result<Option<ViewerToken>, StoreError>;

    /// Finds the unrevoked viewer token with this secret hash, and its org; the caller checks
    /// `expires_at` (so that it can say why a token stopped working).
    async fn authenticate_viewer(
        &self,
        hash: &SecretHash,
    ) -> Result<Option<(Tenant, ViewerToken)>, StoreError>;

    /// How many of the org's viewer tokens are live at `now` (unrevoked, expiring later).
    async fn count_live_viewer_tokens(
        &self,
        tenant: &Tenant,
        now: Timestamp,
    ) -> Result<u64, StoreError>;

    /// Records when keys were last used (best effort, batched by the caller).
    async fn touch_api_keys(&self, used: Vec<(Uuid, Timestamp)>) -> Result<(), StoreError>;

    /// Stores request logs atomically: every record of every batch, or none. A record whose
    /// id is already stored for its org is skipped and counted as a duplicate. Returns only
    /// once the records are durably committed.
    async fn insert_request_logs(
        &self,
        batches: Vec<LogBatch>,
    ) -> Result<InsertOutcome, StoreError>;

    /// One page of the org's request logs that match `filter`, in `sort` order.
    async fn list_request_logs(
        &self,
        tenant: &Tenant,
        filter: &LogFilter,
        sort: Sort,
        page: PageRequest,
    ) -> Result<Page<RequestLog>, StoreError>;

    /// One of the org's request logs.
    async fn get_request_log(
        &self,
        tenant: &Tenant,
        id: Uuid,
    ) -> Result<Option<RequestLog>, StoreError>;

    /// One page of the org's audit entries matching `filter`, newest first (ties by id,
    /// descending), starting after `after` when given.
    async fn list_audit_entries(
        &self,
        tenant: &Tenant,
        filter: &AuditFilter,
        after: Option<AuditAfter>,
        limit: u32,
    ) -> Result<Page<AuditEntry>, StoreError>;

    /// The org's audit entries made by request `request_id` (stored in either spelling, as
    /// [`apitrail_model::query::request_id_matches`] says), oldest first (`created_at`, then
    /// id), at most `limit` (plus whether more follow): the request timeline's audit part.
    /// Reads at most a bounded number of rows whatever the number of matches.
    async fn audit_entries_by_request(
        &self,
        tenant: &Tenant,
        request_id: &str,
        limit: u32,
    ) -> Result<Page<AuditEntry>, StoreError>;

    /// Stores audit entries atomically, appending each new one to its org's hash chain (see
    /// [`apitrail_model::chain`]) in batch order. An entry whose id is already stored for its
    /// org is skipped and counted as a duplicate. Returns only once durably committed.
    async fn insert_audit_entries(
        &self,
        batches: Vec<AuditBatch>,
    ) -> Result<InsertOutcome, StoreError>;

    /// The org's chain links at positions after `after`, in position order, at most `limit`.
    async fn audit_chain(
        &self,
        tenant: &Tenant,
        after: u64,
        limit: u32,
    ) -> Result<Vec<ChainLink>, StoreError>;

    /// The org's chain head as stored.
    async fn audit_chain_head(&self, tenant: &Tenant) -> Result<ChainHead, StoreError>;

    /// One page of the org's audit entries matching `filter`, with their chain fields, oldest
    /// first (`created_at`, then id, ascending), starting after `after` when given: the walk
    /// of an audit export.
    async fn list_audit_links(
        &self,
        tenant: &Tenant,
        filter: &AuditFilter,
        after: Option<AuditAfter>,
        limit: u32,
    ) -> Result<Page<ChainLink>, StoreError>;

    /// One of the org's audit entries, with its chain fields.
    async fn get_audit_link(
        &self,
        tenant: &Tenant,
        id: Uuid,
    ) -> Result<Option<ChainLink>, StoreError>;

    /// Recomputes the org's audit chain up to its head as read first (entries appended
    /// meanwhile are left for the next run), page by page so no read holds a snapshot long.
    #[tracing::instrument(level = "debug", skip_all, fields(org = tenant.org_id().as_str()))]
    async fn verify_audit_chain(&self, tenant: &Tenant) -> Result<ChainReport, StoreError> {
        let head = self.audit_chain_head(tenant).await?;
        let mut verifier = ChainVerifier::new(tenant.org_id().clone());
        let mut after = 0;
        'pages: loop {
            let links = self.audit_chain(tenant, after, VERIFY_PAGE).await?;
            let Some(last) = links.last() else {
                break;
            };
            after = last.position;
            for link in &links {
                if link.position > head.entries || !verifier.feed(link) {
                    break 'pages;
                }
            }
            if links.len() < VERIFY_PAGE as usize {
                break;
            }
        }
        Ok(verifier.finish(head))
    }

    /// Deletes up to `max` of the org's request logs created before `before`, oldest first;
    /// returns how many were deleted (retention runs it until it returns less than `max`).
    async fn purge_request_logs(
        &self,
        tenant: &Tenant,
        before: Timestamp,
        max: u32,
    ) -> Result<u64, StoreError>;

    /// Removes every org's request logs created before `before` (the global retention
    /// policy), deleting at most `batch` records per statement so that no write holds locks
    /// long. The default purges org by org; a backend that partitions by time drops whole
    /// partitions instead and deletes record by record only in the boundary partition.
    #[tracing::instrument(level = "debug", skip_all, fields(before = before.millis(), batch))]
    async fn expire_request_logs(
        &self,
        before: Timestamp,
        batch: u32,
    ) -> Result<Expired, StoreError> {
        let batch = batch.max(1);
        let mut expired = Expired::default();
        let mut after: Option<OrgId> = None;
        loop {
            let page = self.list_orgs(after.as_ref(), 500).await?;
            for org in &page.items {
                let Some(tenant) = self.tenant(&org.id).await? else {
                    continue;
                };
                // Each call is its own write, so ingest interleaves with a long purge.
                loop {
                    let n = self.purge_request_logs(&tenant, before, batch).await?;
                    expired.records += n;
                    if n < u64::from(batch) {
                        break;
                    }
                }
            }
            match page.items.last() {
                Some(last) if page.has_more => after = Some(last.id.clone()),
                _ => return Ok(expired),
            }
        }
    }

    /// Where a tail that starts now starts: every record that becomes visible after this
    /// call returns has a greater position than `after`, and is not in `stored_before`.
    async fn tail_start(&self, tenant: &Tenant, kind: TailKind) -> Result<TailStart, StoreError>;

    /// The position of the org's record `id` of `kind`, if it has one (records stored
    /// before the store kept positions have none).
    async fn tail_position(
        &self,
        tenant: &Tenant,
        kind: TailKind,
        id: Uuid,
    ) -> Result<Option<TailPosition>, StoreError>;

    /// The org's request logs at positions after `after`, in position order, at most
    /// `limit`; only records no later reader can see a predecessor of (the safe horizon).
    async fn tail_request_logs(
        &self,
        tenant: &Tenant,
        after: TailPosition,
        limit: u32,
    ) -> Result<Vec<(TailPosition, RequestLog)>, StoreError>;

    /// The org's audit entries at positions after `after`, in position order, at most
    /// `limit`, up to the safe horizon as [`Store::tail_request_logs`].
    async fn tail_audit_entries(
        &self,
        tenant: &Tenant,
        after: TailPosition,
        limit: u32,
    ) -> Result<Vec<(TailPosition, AuditEntry)>, StoreError>;

    /// Registers `hook`, called after every commit of this process's writes that may have
    /// added records (other processes' writes are found by polling).
    fn on_commit(&self, hook: CommitHook);

    /// The org's stored rollup buckets that `read` selects, in bucket order, at most
    /// `read.max_rows + 1` (one more than the bound says it was passed).
    async fn read_rollups(
        &self,
        tenant: &Tenant,
        read: &RollupRead,
    ) -> Result<Vec<RollupRow>, StoreError>;

    /// The org's request logs matching `filter` (whose `from` and `to` are set), in any order,
    /// at most `max + 1`, with the `group` column when given.
    async fn read_stats_records(
        &self,
        tenant: &Tenant,
        filter: &LogFilter,
        group: Option<GroupBy>,
        max: u32,
    ) -> Result<Vec<StatsRecord>, StoreError>;

    /// Request-log statistics (`GET /v1/logs/stats`): from the rollups when the query's
    /// filters and grouping are rollup dimensions, else from the records; either read is
    /// bounded by [`logstats::MAX_ROWS`].
    #[tracing::instrument(level = "debug", skip_all, fields(org = tenant.org_id().as_str()))]
    async fn log_stats(
        &self,
        tenant: &Tenant,
        query: &StatsQuery,
    ) -> Result<StatsAnswer, StatsError> {
        let mut assembler = Assembler::new(query);
        if query.uses_rollups() {
            let read = RollupRead::of(query);
            let rows = self.read_rollups(tenant, &read).await?;
            if rows.len() > read.max_rows as usize {
                return Err(StatsError::TooLarge { max: read.max_rows });
            }
            for row in &rows {
                assembler.add_row(row).map_err(StoreError::backend)?;
            }
            Ok(assembler.finish(true))
        } else {
            let max = logstats::MAX_ROWS;
            let records = self
                .read_stats_records(tenant, &query.ranged_filter(), query.group_by, max)
                .await?;
            if records.len() > max as usize {
                return Err(StatsError::TooLarge { max });
            }
            for r in &records {
                assembler.add_record(r);
            }
            Ok(assembler.finish(false))
        }
    }

    /// Counts the org's request logs (for diagnostics and tests).
    async fn count_request_logs(&self, tenant: &Tenant) -> Result<u64, StoreError>;

    /// Current figures for `/metrics`.
    fn stats(&self) -> StoreStats;

    /// Flushes queued writes and stops accepting new ones; returns once all are committed.
    async fn shutdown(&self) -> Result<(), StoreError>;
}
